/*
 * fpu: distinctive bit patterns live in the floating-point/vector registers
 * across the checkpoint.
 *
 * x86_64: xmm0-15 (and the upper halves of ymm0-15 when the CPU has AVX),
 * the eight x87 stack registers, MXCSR and the x87 control word.
 * ARM: d0-d15 (d0-d31 when the VFP has 32 double registers) and FPSCR.
 * AArch64: the 128-bit v0-v31 and FPCR.
 *
 * One hand-written routine loads the registers, writes "READY fpu" itself (so
 * the values are certainly live before the harness can act), then polls for
 * go with raw nanosleep/faccessat syscalls — no compiler-generated code runs
 * while the values must stay in the registers — and finally stores them for C
 * to compare bit by bit.
 *
 * Usage: fpu [--selftest-fail=vec|ctl|x87|ymm|vec-high]
 */
#include "common.h"

#define F_WIDE 1     /* x86: AVX present; ARM: d16-d31 present; AArch64: always */
#define F_VEC 2      /* perturb a vector/VFP register after go */
#define F_X87 4      /* perturb an x87 register (x86) */
#define F_CTL 8      /* perturb MXCSR / FPSCR */
#define F_WIDE_VEC 16 /* perturb a ymm upper half / d20 / v20 */

#if defined(__x86_64__)

struct fpu_regs {
    uint8_t xmm[16][16]; /*   0 */
    uint8_t ymm_hi[16][16]; /* 256 */
    uint8_t st[8][16]; /* 512: 80-bit values in 16-byte slots */
    uint32_t mxcsr; /* 640 */
    uint16_t fcw; /* 644 */
    uint8_t pad[10];
};
_Static_assert(__builtin_offsetof(struct fpu_regs, mxcsr) == 640, "mxcsr offset");
_Static_assert(__builtin_offsetof(struct fpu_regs, fcw) == 644, "fcw offset");

void fpu_hold(const struct fpu_regs *in, struct fpu_regs *out, long flags);

#define XMM_LOAD(i) \
    "movdqu xmm" #i ", [r12+" #i "*16]\n"
#define YMM_LOAD(i) \
    "vmovdqu xmm" #i ", [r12+" #i "*16]\n" \
    "vinsertf128 ymm" #i ", ymm" #i ", [r12+256+" #i "*16], 1\n"
#define XMM_STORE(i) \
    "movdqu [r13+" #i "*16], xmm" #i "\n"
#define YMM_STORE(i) \
    "vmovdqu [r13+" #i "*16], xmm" #i "\n" \
    "vextractf128 [r13+256+" #i "*16], ymm" #i ", 1\n"
#define ALL16(m) m(0) m(1) m(2) m(3) m(4) m(5) m(6) m(7) m(8) m(9) m(10) m(11) m(12) m(13) m(14) m(15)

__asm__(
    ".intel_syntax noprefix\n"
    ".text\n"
    ".globl fpu_hold\n"
    ".type fpu_hold, @function\n"
    "fpu_hold:\n"
    "push rbx\n"
    "push r12\n"
    "push r13\n"
    "sub rsp, 16\n"
    "mov r12, rdi\n"
    "mov r13, rsi\n"
    "mov rbx, rdx\n"
    "stmxcsr [rsp]\n"
    "fnstcw [rsp+4]\n"
    "fninit\n"
    "fldcw [r12+644]\n"
    "ldmxcsr [r12+640]\n"
    "fld tbyte ptr [r12+512+7*16]\n"
    "fld tbyte ptr [r12+512+6*16]\n"
    "fld tbyte ptr [r12+512+5*16]\n"
    "fld tbyte ptr [r12+512+4*16]\n"
    "fld tbyte ptr [r12+512+3*16]\n"
    "fld tbyte ptr [r12+512+2*16]\n"
    "fld tbyte ptr [r12+512+1*16]\n"
    "fld tbyte ptr [r12+512+0*16]\n"
    "test rbx, 1\n"
    "jz 1f\n"
    ALL16(YMM_LOAD)
    "jmp 2f\n"
    "1:\n"
    ALL16(XMM_LOAD)
    "2:\n"
    /* write(1, "READY fpu\n", 10) */
    "mov eax, 1\n"
    "mov edi, 1\n"
    "lea rsi, [rip+fpu_ready_msg]\n"
    "mov edx, 10\n"
    "syscall\n"
    "3:\n"
    /* nanosleep(&20ms, NULL) */
    "mov eax, 35\n"
    "lea rdi, [rip+fpu_poll_ts]\n"
    "xor esi, esi\n"
    "syscall\n"
    /* faccessat(AT_FDCWD, "go", F_OK, 0) */
    "mov eax, 269\n"
    "mov rdi, -100\n"
    "lea rsi, [rip+fpu_go_path]\n"
    "xor edx, edx\n"
    "xor r10d, r10d\n"
    "syscall\n"
    "test rax, rax\n"
    "jnz 3b\n"
    "test rbx, 2\n"
    "jz 4f\n"
    "pcmpeqb xmm14, xmm14\n"
    "4:\n"
    "test rbx, 4\n"
    "jz 5f\n"
    "fchs\n"
    "5:\n"
    "test rbx, 8\n"
    "jz 6f\n"
    "ldmxcsr [rip+fpu_default_mxcsr]\n"
    "6:\n"
    "test rbx, 16\n"
    "jz 7f\n"
    "test rbx, 1\n"
    "jz 8f\n"
    "vinsertf128 ymm3, ymm3, xmm15, 1\n"
    "jmp 7f\n"
    "8:\n"
    "pcmpeqb xmm3, xmm3\n"
    "7:\n"
    "test rbx, 1\n"
    "jz 1f\n"
    ALL16(YMM_STORE)
    "vzeroupper\n"
    "jmp 2f\n"
    "1:\n"
    ALL16(XMM_STORE)
    "2:\n"
    "fstp tbyte ptr [r13+512+0*16]\n"
    "fstp tbyte ptr [r13+512+1*16]\n"
    "fstp tbyte ptr [r13+512+2*16]\n"
    "fstp tbyte ptr [r13+512+3*16]\n"
    "fstp tbyte ptr [r13+512+4*16]\n"
    "fstp tbyte ptr [r13+512+5*16]\n"
    "fstp tbyte ptr [r13+512+6*16]\n"
    "fstp tbyte ptr [r13+512+7*16]\n"
    "stmxcsr [r13+640]\n"
    "fnstcw [r13+644]\n"
    "ldmxcsr [rsp]\n"
    "fldcw [rsp+4]\n"
    "add rsp, 16\n"
    "pop r13\n"
    "pop r12\n"
    "pop rbx\n"
    "ret\n"
    ".size fpu_hold, .-fpu_hold\n"
    ".section .rodata\n"
    ".balign 16\n"
    "fpu_poll_ts: .quad 0, 20000000\n"
    "fpu_default_mxcsr: .long 0x1f80\n"
    "fpu_ready_msg: .ascii \"READY fpu\\n\"\n"
    "fpu_go_path: .asciz \"go\"\n"
    ".text\n"
    ".att_syntax prefix\n");

static int wide_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx");
}

static void fill_in(struct fpu_regs *in)
{
    memset(in, 0, sizeof *in);
    fill_pattern(in->xmm, sizeof in->xmm, 0xf0);
    fill_pattern(in->ymm_hi, sizeof in->ymm_hi, 0xf1);
    for (int i = 0; i < 8; i++) {
        uint64_t mant = mix64(0xf2 + (uint64_t)i) | (1ULL << 63); /* normal: explicit integer bit */
        uint16_t se = (uint16_t)(0x3ff0 + i * 3) | (uint16_t)(i % 2 ? 0x8000 : 0);
        memcpy(in->st[i], &mant, 8);
        memcpy(in->st[i] + 8, &se, 2);
    }
    in->mxcsr = 0xffc0; /* flush-to-zero, round toward zero, DAZ, all masked */
    in->fcw = 0x0f7f; /* extended precision, round toward zero */
}

static void compare(const struct fpu_regs *in, const struct fpu_regs *out, int wide)
{
    for (int i = 0; i < 16; i++) {
        if (memcmp(in->xmm[i], out->xmm[i], 16) != 0) {
            uint64_t a[2], b[2];
            memcpy(a, in->xmm[i], 16);
            memcpy(b, out->xmm[i], 16);
            fail("xmm%d: expected %016llx%016llx, got %016llx%016llx", i, (unsigned long long)a[1],
                 (unsigned long long)a[0], (unsigned long long)b[1], (unsigned long long)b[0]);
        }
        if (wide && memcmp(in->ymm_hi[i], out->ymm_hi[i], 16) != 0) {
            uint64_t a[2], b[2];
            memcpy(a, in->ymm_hi[i], 16);
            memcpy(b, out->ymm_hi[i], 16);
            fail("ymm%d upper half: expected %016llx%016llx, got %016llx%016llx", i, (unsigned long long)a[1],
                 (unsigned long long)a[0], (unsigned long long)b[1], (unsigned long long)b[0]);
        }
    }
    for (int i = 0; i < 8; i++) {
        if (memcmp(in->st[i], out->st[i], 10) != 0) {
            uint64_t am, bm;
            uint16_t ae, be;
            memcpy(&am, in->st[i], 8);
            memcpy(&ae, in->st[i] + 8, 2);
            memcpy(&bm, out->st[i], 8);
            memcpy(&be, out->st[i] + 8, 2);
            fail("st(%d): expected %04x:%016llx, got %04x:%016llx", i, ae, (unsigned long long)am, be,
                 (unsigned long long)bm);
        }
    }
    if (in->mxcsr != out->mxcsr)
        fail("mxcsr: expected %#x, got %#x", in->mxcsr, out->mxcsr);
    if (in->fcw != out->fcw)
        fail("x87 control word: expected %#x, got %#x", in->fcw, out->fcw);
}

#elif defined(__arm__)

#include <sys/auxv.h>

struct fpu_regs {
    uint64_t d[32]; /*   0 */
    uint32_t fpscr; /* 256 */
    uint32_t pad;
};
_Static_assert(__builtin_offsetof(struct fpu_regs, fpscr) == 256, "fpscr offset");

void fpu_hold(const struct fpu_regs *in, struct fpu_regs *out, long flags);

__asm__(
    ".text\n"
    ".arm\n"
    ".syntax unified\n"
    ".fpu vfpv3\n"
    ".globl fpu_hold\n"
    ".type fpu_hold, %function\n"
    ".balign 4\n"
    "fpu_hold:\n"
    "push {r4-r8, lr}\n"
    "vpush {d8-d15}\n"
    "mov r4, r0\n"
    "mov r5, r1\n"
    "mov r6, r2\n"
    "vmrs r8, fpscr\n"
    "vldmia r4, {d0-d15}\n"
    "tst r6, #1\n"
    "beq 1f\n"
    "add r3, r4, #128\n"
    "vldmia r3, {d16-d31}\n"
    "1:\n"
    "ldr r3, [r4, #256]\n"
    "vmsr fpscr, r3\n"
    /* write(1, "READY fpu\n", 10) */
    "mov r0, #1\n"
    "adr r1, fpu_ready_msg\n"
    "mov r2, #10\n"
    "mov r7, #4\n"
    "svc #0\n"
    "2:\n"
    /* nanosleep(&20ms, NULL) */
    "adr r0, fpu_poll_ts\n"
    "mov r1, #0\n"
    "mov r7, #162\n"
    "svc #0\n"
    /* faccessat(AT_FDCWD, "go", F_OK, 0): syscall 334 */
    "mvn r0, #99\n"
    "adr r1, fpu_go_path\n"
    "mov r2, #0\n"
    "mov r3, #0\n"
    "mov r7, #256\n"
    "add r7, r7, #78\n"
    "svc #0\n"
    "cmp r0, #0\n"
    "bne 2b\n"
    "tst r6, #2\n"
    "beq 3f\n"
    "vneg.f64 d5, d5\n"
    "3:\n"
    "tst r6, #8\n"
    "beq 4f\n"
    "vmrs r3, fpscr\n"
    "eor r3, r3, #0x00c00000\n"
    "vmsr fpscr, r3\n"
    "4:\n"
    "tst r6, #16\n"
    "beq 5f\n"
    "tst r6, #1\n"
    "beq 6f\n"
    "vneg.f64 d20, d20\n"
    "b 5f\n"
    "6:\n"
    "vneg.f64 d13, d13\n"
    "5:\n"
    "vstmia r5, {d0-d15}\n"
    "tst r6, #1\n"
    "beq 7f\n"
    "add r3, r5, #128\n"
    "vstmia r3, {d16-d31}\n"
    "7:\n"
    "vmrs r3, fpscr\n"
    "str r3, [r5, #256]\n"
    "vmsr fpscr, r8\n"
    "vpop {d8-d15}\n"
    "pop {r4-r8, pc}\n"
    ".balign 8\n"
    "fpu_poll_ts: .long 0, 20000000\n"
    "fpu_ready_msg: .ascii \"READY fpu\\n\"\n"
    "fpu_go_path: .asciz \"go\"\n"
    ".balign 4\n"
    ".size fpu_hold, .-fpu_hold\n"
    ".fpu vfp\n");

#ifndef HWCAP_VFPD32
#define HWCAP_VFPD32 (1 << 19)
#endif

static int wide_available(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_VFPD32) != 0;
}

static void fill_in(struct fpu_regs *in)
{
    memset(in, 0, sizeof *in);
    for (int i = 0; i < 32; i++)
        in->d[i] = mix64(0xf0 + (uint64_t)i);
    in->fpscr = 0x03c00000; /* default NaN, flush-to-zero, round toward zero */
}

static void compare(const struct fpu_regs *in, const struct fpu_regs *out, int wide)
{
    int n = wide ? 32 : 16;
    for (int i = 0; i < n; i++)
        if (in->d[i] != out->d[i])
            fail("d%d: expected %016llx, got %016llx", i, (unsigned long long)in->d[i],
                 (unsigned long long)out->d[i]);
    /* Only the control bits: the cumulative exception flags may legitimately be set. */
    uint32_t ctl = 0x07f79f00;
    if ((in->fpscr & ctl) != (out->fpscr & ctl))
        fail("fpscr control bits: expected %#x, got %#x", in->fpscr & ctl, out->fpscr & ctl);
}

#elif defined(__aarch64__)

struct fpu_regs {
    uint8_t v[32][16]; /*   0 */
    uint32_t fpcr; /* 512 */
    uint32_t fpsr; /* 516 */
};
_Static_assert(__builtin_offsetof(struct fpu_regs, fpcr) == 512, "fpcr offset");

void fpu_hold(const struct fpu_regs *in, struct fpu_regs *out, long flags);

#define V_LOAD4(a, b, c, d) "ld1 {v" #a ".16b, v" #b ".16b, v" #c ".16b, v" #d ".16b}, [x9], #64\n"
#define V_STORE4(a, b, c, d) "st1 {v" #a ".16b, v" #b ".16b, v" #c ".16b, v" #d ".16b}, [x9], #64\n"
#define V_ALL(m) m(0, 1, 2, 3) m(4, 5, 6, 7) m(8, 9, 10, 11) m(12, 13, 14, 15) \
    m(16, 17, 18, 19) m(20, 21, 22, 23) m(24, 25, 26, 27) m(28, 29, 30, 31)

__asm__(
    ".text\n"
    ".globl fpu_hold\n"
    ".type fpu_hold, %function\n"
    ".balign 4\n"
    "fpu_hold:\n"
    "stp x29, x30, [sp, #-16]!\n"
    "stp d8, d9, [sp, #-16]!\n"
    "stp d10, d11, [sp, #-16]!\n"
    "stp d12, d13, [sp, #-16]!\n"
    "stp d14, d15, [sp, #-16]!\n"
    "stp x19, x20, [sp, #-16]!\n"
    "stp x21, x22, [sp, #-16]!\n"
    "mov x19, x0\n"
    "mov x20, x1\n"
    "mov x21, x2\n"
    "mrs x22, fpcr\n"
    "mov x9, x19\n"
    V_ALL(V_LOAD4)
    "ldr w10, [x19, #512]\n"
    "msr fpcr, x10\n"
    /* write(1, "READY fpu\n", 10); syscalls keep v0-v31 */
    "mov x0, #1\n"
    "adr x1, fpu_ready_msg\n"
    "mov x2, #10\n"
    "mov x8, #64\n"
    "svc #0\n"
    "2:\n"
    /* nanosleep(&20ms, NULL) */
    "adr x0, fpu_poll_ts\n"
    "mov x1, #0\n"
    "mov x8, #101\n"
    "svc #0\n"
    /* faccessat(AT_FDCWD, "go", F_OK, 0) */
    "mov x0, #-100\n"
    "adr x1, fpu_go_path\n"
    "mov x2, #0\n"
    "mov x3, #0\n"
    "mov x8, #48\n"
    "svc #0\n"
    "cbnz x0, 2b\n"
    "tst x21, #2\n"
    "b.eq 3f\n"
    "not v5.16b, v5.16b\n"
    "3:\n"
    "tst x21, #8\n"
    "b.eq 4f\n"
    "mrs x10, fpcr\n"
    "eor x10, x10, #0x00c00000\n"
    "msr fpcr, x10\n"
    "4:\n"
    "tst x21, #16\n"
    "b.eq 5f\n"
    "not v20.16b, v20.16b\n"
    "5:\n"
    "mov x9, x20\n"
    V_ALL(V_STORE4)
    "mrs x10, fpcr\n"
    "str w10, [x20, #512]\n"
    "mrs x10, fpsr\n"
    "str w10, [x20, #516]\n"
    "msr fpcr, x22\n"
    "ldp x21, x22, [sp], #16\n"
    "ldp x19, x20, [sp], #16\n"
    "ldp d14, d15, [sp], #16\n"
    "ldp d12, d13, [sp], #16\n"
    "ldp d10, d11, [sp], #16\n"
    "ldp d8, d9, [sp], #16\n"
    "ldp x29, x30, [sp], #16\n"
    "ret\n"
    ".balign 8\n"
    "fpu_poll_ts: .quad 0, 20000000\n"
    "fpu_ready_msg: .ascii \"READY fpu\\n\"\n"
    "fpu_go_path: .asciz \"go\"\n"
    ".balign 4\n"
    ".size fpu_hold, .-fpu_hold\n");

/* All 32 vector registers exist on every AArch64 CPU. */
static int wide_available(void)
{
    return 1;
}

static void fill_in(struct fpu_regs *in)
{
    memset(in, 0, sizeof *in);
    for (int i = 0; i < 32; i++) {
        uint64_t lo = mix64(0xf0 + (uint64_t)i), hi = mix64(0x1f0 + (uint64_t)i);
        memcpy(in->v[i], &lo, 8);
        memcpy(in->v[i] + 8, &hi, 8);
    }
    in->fpcr = 0x03c00000; /* default NaN, flush-to-zero, round toward zero */
}

static void compare(const struct fpu_regs *in, const struct fpu_regs *out, int wide)
{
    (void)wide;
    for (int i = 0; i < 32; i++)
        if (memcmp(in->v[i], out->v[i], 16) != 0) {
            uint64_t al, ah, bl, bh;
            memcpy(&al, in->v[i], 8);
            memcpy(&ah, in->v[i] + 8, 8);
            memcpy(&bl, out->v[i], 8);
            memcpy(&bh, out->v[i] + 8, 8);
            fail("v%d: expected %016llx:%016llx, got %016llx:%016llx", i, (unsigned long long)ah,
                 (unsigned long long)al, (unsigned long long)bh, (unsigned long long)bl);
        }
    /* AHP, DN, FZ and RMode: the bits this CPU implements and the app sets. */
    uint32_t ctl = 0x07c00000;
    if ((in->fpcr & ctl) != (out->fpcr & ctl))
        fail("fpcr control bits: expected %#x, got %#x", in->fpcr & ctl, out->fpcr & ctl);
}

#else
#error "fpu: no register routine for this architecture"
#endif

int main(int argc, char **argv)
{
    app_init("fpu", argc, argv);
    static struct fpu_regs in, out;
    fill_in(&in);
    memset(&out, 0, sizeof out);
    int wide = wide_available();
    long flags = wide ? F_WIDE : 0;
    if (perturb("vec"))
        flags |= F_VEC;
    if (perturb("ctl"))
        flags |= F_CTL;
#if defined(__x86_64__)
    if (perturb("x87"))
        flags |= F_X87;
    if (perturb("ymm"))
        flags |= F_WIDE_VEC;
#else
    if (perturb("vec-high"))
        flags |= F_WIDE_VEC;
#endif
    record_fds(); /* fpu_hold writes READY itself */
    fpu_hold(&in, &out, flags);
    compare(&in, &out, wide);
    return finish();
}
