//! Checked conversions of values that come from outside: an image, /proc,
//! a socket or a kernel reply. A value that does not fit the type it must
//! become is an error naming the value and what it is, never a silent zero.

use std::fmt::Display;

/// A value that does not fit the type it must become.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} does not fit {ty}")]
pub struct OutOfRange {
    /// What the value is, e.g. "file offset of fd 3".
    pub what: String,
    /// The value as read.
    pub value: String,
    /// The type it had to fit, e.g. "off_t".
    pub ty: &'static str,
}

/// `v` as a `T`, or an error naming `what` and `ty` (the name the reader
/// knows the target type by, e.g. "off_t" rather than "i64").
pub fn fit<T, U>(v: U, ty: &'static str, what: impl Display) -> Result<T, OutOfRange>
where
    T: TryFrom<U>,
    U: Copy + Display,
{
    T::try_from(v).map_err(|_| OutOfRange {
        what: what.to_string(),
        value: v.to_string(),
        ty,
    })
}

impl From<OutOfRange> for super::Cause {
    fn from(e: OutOfRange) -> Self {
        super::Cause::Refused(e.to_string())
    }
}

impl From<OutOfRange> for std::io::Error {
    fn from(e: OutOfRange) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_passes_values_in_range() {
        let v: Result<i32, _> = fit(7u64, "int", "fd");
        assert_eq!(v, Ok(7));
        let v: Result<u32, _> = fit(u64::from(u32::MAX), "u32", "count");
        assert_eq!(v, Ok(u32::MAX));
    }

    #[test]
    fn fit_names_the_value_and_the_type() {
        let e = fit::<i64, u64>(u64::MAX, "off_t", format_args!("file offset of fd {}", 3))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "file offset of fd 3 18446744073709551615 does not fit off_t"
        );
        let e = fit::<u32, i64>(-1, "u32", "signal number").unwrap_err();
        assert_eq!(e.to_string(), "signal number -1 does not fit u32");
    }

    #[test]
    fn out_of_range_becomes_a_refusal_and_invalid_data() {
        let e = fit::<u8, i32>(300, "u8", "tos").unwrap_err();
        let c: super::super::Cause = e.clone().into();
        assert!(matches!(c, super::super::Cause::Refused(ref m) if m == "tos 300 does not fit u8"));
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(io.to_string(), "tos 300 does not fit u8");
    }
}
