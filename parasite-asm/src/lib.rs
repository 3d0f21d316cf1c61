//! Hand-written, position-independent code that torpor injects into a frozen
//! task: the syscall trampoline and the parasite that collects in-process
//! state. No relocations; every blob runs wherever it is mapped.
#![no_std]
