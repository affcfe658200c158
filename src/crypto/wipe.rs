//! Wiping key types that do not wipe themselves.
//!
//! `sm2` 0.14's `SigningKey` and `DecryptingKey` hold their secret scalar in a plain
//! `NonZeroScalar` and have no `Drop` that clears it, so a dropped key would leave the scalar in
//! freed memory. [`Wiped`] drops the inner value in place and then overwrites every byte it
//! occupied. This and `risk/gallery/scan.rs` (the AVX2 scan of the 1:N index) are the crate's
//! only `unsafe` code.

use core::mem::{ManuallyDrop, size_of};
use core::ops::Deref;
use core::sync::atomic::{Ordering, compiler_fence};

/// Owns a `T` and overwrites its bytes with zeros when dropped.
///
/// Keep it boxed (`Box<Wiped<T>>`) so that moving the owner does not leave copies behind.
pub struct Wiped<T> {
    inner: ManuallyDrop<T>,
}

impl<T> Wiped<T> {
    pub fn new(inner: T) -> Box<Self> {
        Box::new(Self {
            inner: ManuallyDrop::new(inner),
        })
    }
}

impl<T> Deref for Wiped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> Drop for Wiped<T> {
    fn drop(&mut self) {
        let start = (&mut self.inner as *mut ManuallyDrop<T>).cast::<u8>();
        // SAFETY: `inner` is initialised and is dropped here exactly once: it is a
        // `ManuallyDrop` field, so nothing else drops it, and `self` is never used again.
        // Afterwards its `size_of::<T>()` bytes are still memory owned by `self`, so writing
        // bytes into them is sound; no value of `T` is read or dropped from them again.
        unsafe {
            ManuallyDrop::drop(&mut self.inner);
            for offset in 0..size_of::<T>() {
                core::ptr::write_volatile(start.add(offset), 0u8);
            }
        }
        compiler_fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Marker {
        secret: [u8; 32],
        _heap: Vec<u8>,
    }
    impl Drop for Marker {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_inner_once_and_zeroes_its_bytes() {
        // Hold the wrapper in a ManuallyDrop slot so that its memory stays ours to inspect
        // after the wrapper's Drop has run.
        let mut slot = ManuallyDrop::new(Wiped {
            inner: ManuallyDrop::new(Marker {
                secret: [0xA5; 32],
                _heap: vec![1, 2, 3],
            }),
        });
        assert_eq!(slot.secret, [0xA5; 32]);
        let before = DROPS.load(Ordering::SeqCst);
        // SAFETY: the slot is dropped once here and not used as a `Wiped` afterwards.
        unsafe { ManuallyDrop::drop(&mut slot) };
        assert_eq!(DROPS.load(Ordering::SeqCst), before + 1);
        let start = (&slot as *const ManuallyDrop<Wiped<Marker>>).cast::<u8>();
        // SAFETY: every byte of the slot was written with zero by `Wiped::drop`, so the bytes
        // are initialised, and the slot is live stack memory.
        let bytes = unsafe { core::slice::from_raw_parts(start, size_of::<Wiped<Marker>>()) };
        assert!(bytes.iter().all(|&b| b == 0), "key bytes survived the drop");
    }

    #[test]
    fn deref_reaches_the_inner_value() {
        let wiped = Wiped::new(vec![7u8; 4]);
        assert_eq!(wiped.len(), 4);
    }
}
