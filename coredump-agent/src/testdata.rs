//! Deterministic data for tests: a xorshift64 generator, so that a failure found with
//! pseudo-random input reproduces, and byte patterns shaped like core dumps. Compiled for the
//! agent's own tests and, with the `test-support` feature, for the end-to-end tests.

/// Marsaglia's xorshift64: fast, tiny, and the same sequence on every run.
#[derive(Clone, Debug)]
pub struct Xorshift(u64);

impl Xorshift {
    /// The generator the tests share unless they need two independent streams.
    pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator from a non-zero seed.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (n > 0; the slight bias does not matter for tests).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// `len` bytes shaped like a core: one 64 KiB block in three random (incompressible), the
/// others zero (untouched pages), as a compressor sees a real dump.
pub fn core_like(len: usize) -> Vec<u8> {
    const BLOCK: usize = 64 << 10;
    let mut rng = Xorshift::new(Xorshift::SEED);
    (0..len)
        .map(|i| {
            if (i / BLOCK) % 3 == 1 {
                rng.next_u64() as u8
            } else {
                0
            }
        })
        .collect()
}

/// `len` random bytes (incompressible).
pub fn random(len: usize) -> Vec<u8> {
    let mut rng = Xorshift::new(Xorshift::SEED);
    (0..len).map(|_| (rng.next_u64() >> 24) as u8).collect()
}
