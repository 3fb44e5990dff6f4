//! Gorilla compression of one series' samples (Pelkonen et al., VLDB 2015, the encoding
//! Prometheus' chunks use): timestamps as delta-of-deltas, values as the XOR of each with the
//! one before, written and read a bit at a time. [`Head`] takes samples in time order, [`Iter`]
//! reads them back. No I/O here.

/// Appends bits to a byte vector, most significant bit first.
#[derive(Debug, Default, Clone)]
struct BitWriter {
    buf: Vec<u8>,
    /// Bits used in the last byte (0 when it is full or there is none).
    used: u8,
}

impl BitWriter {
    /// Starts a new byte. The buffer grows 32 bytes at a time, not by doubling: an open chunk
    /// lives for 120 samples, and every series has one.
    fn push_byte(&mut self) {
        if self.buf.len() == self.buf.capacity() {
            self.buf.reserve_exact(32);
        }
        self.buf.push(0);
    }

    fn write_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.push_byte();
        }
        if bit {
            *self.buf.last_mut().expect("a byte was pushed") |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// Writes the low `n` bits of `v` (n ≤ 64).
    fn write_bits(&mut self, v: u64, n: u8) {
        let mut n = n;
        while n > 0 {
            if self.used == 0 {
                self.push_byte();
            }
            let free = 8 - self.used;
            let take = free.min(n);
            let bits = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            *self.buf.last_mut().expect("a byte was pushed") |= bits << (free - take);
            self.used = (self.used + take) % 8;
            n -= take;
        }
    }
}

/// Reads what [`BitWriter`] wrote.
struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn read_bit(&mut self) -> bool {
        let b = self.buf[self.pos / 8] & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        b
    }

    fn read_bits(&mut self, n: u8) -> u64 {
        let mut v = 0u64;
        let mut n = n;
        while n > 0 {
            let off = (self.pos % 8) as u8;
            let avail = 8 - off;
            let take = avail.min(n);
            let byte = self.buf[self.pos / 8];
            let bits = (byte >> (avail - take)) & (((1u16 << take) - 1) as u8);
            v = (v << take) | u64::from(bits);
            self.pos += usize::from(take);
            n -= take;
        }
        v
    }
}

/// Delta-of-delta buckets: (prefix bits, prefix length, payload bits).
const DOD_BUCKETS: [(u64, u8, u8); 5] =
    [(0b10, 2, 7), (0b110, 3, 9), (0b1110, 4, 12), (0b11110, 5, 32), (0b11111, 5, 64)];

fn fits(v: i64, bits: u8) -> bool {
    bits == 64 || (-(1i64 << (bits - 1))..(1i64 << (bits - 1))).contains(&v)
}

fn sign_extend(v: u64, bits: u8) -> i64 {
    if bits == 64 {
        return v as i64;
    }
    let shift = 64 - u32::from(bits);
    ((v << shift) as i64) >> shift
}

/// The open chunk of a series, taking samples in time order.
#[derive(Debug, Clone)]
pub struct Head {
    w: BitWriter,
    pub(super) n: u16,
    pub(super) first_t: i64,
    last_t: i64,
    last_delta: i64,
    last_v: u64,
    leading: u8,
    trailing: u8,
}

impl Head {
    /// A chunk whose first sample is (t, v).
    pub fn new(t: i64, v: f64) -> Head {
        Head::with_capacity(t, v, 0)
    }

    /// A chunk whose first sample is (t, v), with room for `bytes` of stream.
    pub fn with_capacity(t: i64, v: f64, bytes: usize) -> Head {
        let mut w = BitWriter { buf: Vec::with_capacity(bytes), used: 0 };
        w.write_bits(v.to_bits(), 64);
        Head { w, n: 1, first_t: t, last_t: t, last_delta: 0, last_v: v.to_bits(), leading: 0xff, trailing: 0 }
    }

    /// Rebuilds a chunk from samples in time order (at least one).
    pub(super) fn from_points(points: &[(i64, f64)]) -> Head {
        let mut h = Head::new(points[0].0, points[0].1);
        for &(t, v) in &points[1..] {
            h.push(t, v);
        }
        h
    }

    /// Appends a sample newer than every sample in the chunk.
    pub fn push(&mut self, t: i64, v: f64) {
        debug_assert!(t > self.last_t, "samples go in time order");
        let delta = t.wrapping_sub(self.last_t);
        let dod = delta.wrapping_sub(self.last_delta);
        if dod == 0 {
            self.w.write_bit(false);
        } else {
            let &(prefix, len, bits) =
                DOD_BUCKETS.iter().find(|&&(_, _, bits)| fits(dod, bits)).expect("the last bucket takes any value");
            self.w.write_bits(prefix, len);
            self.w.write_bits(dod as u64, bits);
        }
        let v = v.to_bits();
        let xor = v ^ self.last_v;
        if xor == 0 {
            self.w.write_bit(false);
        } else {
            self.w.write_bit(true);
            let leading = (xor.leading_zeros() as u8).min(31);
            let trailing = xor.trailing_zeros() as u8;
            if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
                self.w.write_bit(false);
                self.w.write_bits(xor >> self.trailing, 64 - self.leading - self.trailing);
            } else {
                self.w.write_bit(true);
                let sig = 64 - leading - trailing;
                self.w.write_bits(u64::from(leading), 5);
                // 64 significant bits are written as 0: a 6-bit field holds 0..=63.
                self.w.write_bits(u64::from(sig % 64), 6);
                self.w.write_bits(xor >> trailing, sig);
                self.leading = leading;
                self.trailing = trailing;
            }
        }
        self.last_delta = delta;
        self.last_t = t;
        self.last_v = v;
        self.n += 1;
    }

    /// Number of samples.
    pub fn len(&self) -> u16 {
        self.n
    }

    /// Timestamp of the newest sample.
    pub fn last_t(&self) -> i64 {
        self.last_t
    }

    /// Timestamp of the oldest sample.
    pub fn first_t(&self) -> i64 {
        self.first_t
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(self.first_t, self.n, &self.w.buf)
    }

    /// The bit stream.
    pub(super) fn stream(&self) -> &[u8] {
        &self.w.buf
    }

    /// Bytes this chunk holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.w.buf.capacity()
    }
}

/// Decodes a chunk's samples, oldest first.
pub struct Iter<'a> {
    r: BitReader<'a>,
    left: u16,
    started: bool,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl<'a> Iter<'a> {
    pub(super) fn new(first_t: i64, n: u16, stream: &'a [u8]) -> Iter<'a> {
        Iter {
            r: BitReader { buf: stream, pos: 0 },
            left: n,
            started: false,
            t: first_t,
            delta: 0,
            v: 0,
            leading: 0,
            trailing: 0,
        }
    }
}

impl Iterator for Iter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if !self.started {
            self.started = true;
            self.v = self.r.read_bits(64);
            return Some((self.t, f64::from_bits(self.v)));
        }
        let mut len = 0;
        while len < 5 && self.r.read_bit() {
            len += 1;
        }
        let dod = match len {
            0 => 0,
            _ => {
                let bits = DOD_BUCKETS[len - 1].2;
                sign_extend(self.r.read_bits(bits), bits)
            }
        };
        self.delta = self.delta.wrapping_add(dod);
        self.t = self.t.wrapping_add(self.delta);
        if self.r.read_bit() {
            if self.r.read_bit() {
                self.leading = self.r.read_bits(5) as u8;
                let sig = match self.r.read_bits(6) as u8 {
                    0 => 64,
                    s => s,
                };
                self.trailing = 64 - self.leading - sig;
            }
            let sig = 64 - self.leading - self.trailing;
            self.v ^= self.r.read_bits(sig) << self.trailing;
        }
        Some((self.t, f64::from_bits(self.v)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}
