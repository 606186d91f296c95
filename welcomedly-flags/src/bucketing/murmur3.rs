//! MurmurHash3 x86_32 (Austin Appleby's public-domain reference), streaming so a flag's salt is
//! hashed once and only the attribute value per evaluation.
//!
//! ```
//! use welcomedly_flags::bucketing::murmur3_x86_32;
//!
//! assert_eq!(murmur3_x86_32(b"", 1), 0x514E_28B7);
//! ```

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// A streaming MurmurHash3 x86_32 state.
#[derive(Debug, Clone)]
pub(crate) struct Murmur3 {
    h1: u32,
    /// Bytes of an incomplete 4-byte block, little-endian.
    tail: u32,
    tail_len: u32,
    len: u32,
}

#[inline]
fn scramble(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

impl Murmur3 {
    pub(crate) fn new(seed: u32) -> Murmur3 {
        Murmur3 {
            h1: seed,
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    #[inline]
    fn block(&mut self, k: u32) {
        self.h1 ^= scramble(k);
        self.h1 = self
            .h1
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64);
    }

    #[inline]
    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        // The reference hashes the length modulo 2^32.
        self.len = self.len.wrapping_add(bytes.len() as u32);
        while self.tail_len != 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
            bytes = rest;
            if self.tail_len == 4 {
                let k = self.tail;
                self.block(k);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        let mut chunks = bytes.chunks_exact(4);
        for chunk in &mut chunks {
            let mut word = [0u8; 4];
            word.copy_from_slice(chunk);
            self.block(u32::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.tail |= u32::from(b) << (8 * self.tail_len);
            self.tail_len += 1;
        }
    }

    #[inline]
    pub(crate) fn finish(&self) -> u32 {
        let mut h = self.h1;
        if self.tail_len != 0 {
            h ^= scramble(self.tail);
        }
        h ^= self.len;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
}

/// MurmurHash3 x86_32 of `bytes` with `seed`.
pub fn murmur3_x86_32(bytes: &[u8], seed: u32) -> u32 {
    let mut m = Murmur3::new(seed);
    m.write(bytes);
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published vectors (SMHasher's reference implementation, as collected in the widely cited
    /// "MurmurHash3 test vectors" list).
    #[test]
    fn published_vectors() {
        let cases: &[(&[u8], u32, u32)] = &[
            (b"", 0, 0),
            (b"", 1, 0x514E_28B7),
            (b"", 0xffff_ffff, 0x81F1_6F39),
            (&[0xff, 0xff, 0xff, 0xff], 0, 0x7629_3B50),
            (&[0x21, 0x43, 0x65, 0x87], 0, 0xF55B_516B),
            (&[0x21, 0x43, 0x65, 0x87], 0x5082_EDEE, 0x2362_F9DE),
            (&[0x21, 0x43, 0x65], 0, 0x7E4A_8634),
            (&[0x21, 0x43], 0, 0xA0F7_B07A),
            (&[0x21], 0, 0x7266_1CF4),
            (&[0, 0, 0, 0], 0, 0x2362_F9DE),
            (&[0, 0, 0], 0, 0x85F0_B427),
            (&[0, 0], 0, 0x30F4_C306),
            (&[0], 0, 0x514E_28B7),
            (b"aaaa", 0x9747_b28c, 0x5A97_808A),
            (b"aaa", 0x9747_b28c, 0x283E_0130),
            (b"aa", 0x9747_b28c, 0x5D21_1726),
            (b"a", 0x9747_b28c, 0x7FA0_9EA6),
            (b"abcd", 0x9747_b28c, 0xF047_8627),
            (b"abc", 0x9747_b28c, 0xC84A_62DD),
            (b"ab", 0x9747_b28c, 0x7487_5592),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4CBA),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2FA8_26CD,
            ),
        ];
        for &(input, seed, want) in cases {
            assert_eq!(
                murmur3_x86_32(input, seed),
                want,
                "input {input:?} seed {seed:#x}"
            );
        }
    }

    #[test]
    fn streaming_in_pieces_equals_one_shot() {
        let text = b"The quick brown fox jumps over the lazy dog";
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            for split2 in 0..b.len() {
                let (b1, b2) = b.split_at(split2);
                let mut m = Murmur3::new(7);
                m.write(a);
                m.write(b1);
                m.write(b2);
                assert_eq!(m.finish(), murmur3_x86_32(text, 7));
            }
        }
    }
}
