//! Python's `random.Random(seed_string).choice([False, True])`, bit for bit.
//!
//! AlpacaEval decides per instruction whether to show the judge the two outputs in swapped order
//! with a Python RNG seeded by a string (`"is_switched_outputs" + instruction + "0"`). To swap
//! exactly the same instructions as the official tool, this module reimplements what CPython
//! does for such a seed: the string's UTF-8 bytes followed by their SHA-512 digest, read as one
//! big-endian integer, feed the Mersenne Twister's `init_by_array` as 32-bit words, least
//! significant first; `choice` of two items draws `getrandbits(2)` until it is below 2.

use sha2::{Digest, Sha512};

const N: usize = 624;
const M: usize = 397;

/// The MT19937 generator as CPython seeds and uses it.
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a `str` seed (CPython's default version 2 seeding).
    pub fn from_str_seed(seed: &str) -> Self {
        let mut bytes = seed.as_bytes().to_vec();
        bytes.extend_from_slice(&Sha512::digest(seed.as_bytes()));
        // The integer's 32-bit words, least significant first; leading zero bytes do not count.
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let significant = &bytes[first..];
        let mut key: Vec<u32> = significant
            .rchunks(4)
            .map(|chunk| chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32))
            .collect();
        if key.is_empty() {
            key.push(0);
        }
        Self::from_key(&key)
    }

    fn from_key(key: &[u32]) -> Self {
        let mut mt = [0u32; N];
        mt[0] = 19_650_218;
        for i in 1..N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            mt[i] = (mt[i] ^ (mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        Self {
            state: mt,
            index: N,
        }
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % N] & 0x7fff_ffff);
            let mut next = self.state[(k + M) % N] ^ (y >> 1);
            if y & 1 == 1 {
                next ^= 0x9908_b0df;
            }
            self.state[k] = next;
        }
        self.index = 0;
    }

    /// `choice([False, True])`.
    pub fn choose_bool(&mut self) -> bool {
        loop {
            let r = self.next_u32() >> 30;
            if r < 2 {
                return r == 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11:
    // `r = random.Random(s); random.Random(s).choice([False, True]), r.getrandbits(32), r.getrandbits(32)`
    #[test]
    fn matches_cpython_for_string_seeds() {
        let cases: [(&str, bool, u32, u32); 5] = [
            (
                "is_switched_outputsWhat are the names of some famous actors that started their careers on Broadway?0",
                false,
                3_250_776_821,
                2_416_685_854,
            ),
            ("a", true, 1_168_357_962, 2_173_948_116),
            ("", true, 4_124_137_760, 1_951_988_028),
            ("héllo wörld", false, 336_257_500, 1_635_263_030),
            ("is_switched_outputsHow do I make a cake?0", false, 250_414_161, 1_562_304_708),
        ];
        for (seed, choice, first, second) in cases {
            assert_eq!(
                PyRandom::from_str_seed(seed).choose_bool(),
                choice,
                "{seed:?}"
            );
            let mut r = PyRandom::from_str_seed(seed);
            assert_eq!((r.next_u32(), r.next_u32()), (first, second), "{seed:?}");
        }
    }
}
