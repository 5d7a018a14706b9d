/* The block-wise 8-bit codec of adaptim.core.quantization as a C loop: the same codes and values,
 * code for code, at a fraction of the time on a CPU (see native_codec.py for why it exists and how
 * it is built; the tests compare it with encode_reference at every cut of the map and its float32
 * neighbours, at the edges of every table bucket and on a stride through [0, 1]; it was checked
 * once against it over every float32 in [0, 1], both maps, both signs).
 *
 * Encoding a block: absmax = max |x| (NaN if any element is NaN), y = x / absmax in float32 (the
 * division the reference does), and the code of the map value nearest to y. The cuts are the
 * smallest float32 at or above each midpoint between positive-side neighbours, so |y| >= cut is
 * |y| >= midpoint exactly, and a tie (|y| on a midpoint) goes to the larger magnitude, as defined.
 * The count of cuts at or below |y| is read from one table, built in Python from the exact
 * (float64) midpoints of the map. Its index is |y|'s bucket: the top 16 bits of its float32 bit
 * pattern (exponent and top 7 mantissa bits). Every bucket holds at most one cut (both maps; the
 * builder asserts it), and within a bucket float order is the order of the low 16 bits, so an entry
 * holds (cuts below the bucket) << 17 | (the cut's low 16 bits, or 65536 for none), and
 *
 *   c = (entry >> 17) + (low16(|y|) >= (entry & 0x1FFFF))
 *
 * One gather per 8 elements: gathers are slow on some CPUs (AMD Zen 2); with a second one (the
 * count, then its cut) encoding took 1.6 ns per element on one thread here, against 1.0.
 * Entry 0 stands for every bucket below the first cut's (count 0, no cut), so the table keeps to
 * the buckets from there to 1.0 and stays in L1. The signed map
 * mirrors: code(-y) = 254 - code(y) (clamped at 254: the map has no -1, its 1.0 mirrors to code 0);
 * the unsigned map gives a negative y code 0. Blocks with an infinite or NaN absmax take the
 * reference's special rules (infinities to the end codes, everything else to the zero code).
 *
 * Decoding: values[code] * absmax, and 0 for the zero code of a block whose absmax is infinite
 * (0 * inf would be NaN). The AVX2 loop reads 8 codes at a time (decode_block_avx2).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

#define BLOCK 256
/* below this many elements a call stays on one thread (waking the team costs microseconds) */
#define PARALLEL_MIN 65536

int adaptim_codec_abi(void) { return 1; }

/* Built with OpenMP: the library then shares the OpenMP runtime already loaded by torch (the same
 * soname, libgomp.so.1, as Inductor's kernels do), so its loops run on torch's thread team, at
 * torch.get_num_threads() threads, instead of competing with it. */
int adaptim_codec_openmp(void) {
#if defined(_OPENMP)
  return 1;
#else
  return 0;
#endif
}

int adaptim_codec_vectorized(void) {
#if defined(__AVX2__)
  return 1;
#else
  return 0;
#endif
}

static inline uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

/* One map, as native_codec.py builds it. */
typedef struct {
  const int32_t *table;  /* max(bucket - first_bucket, 0) -> count << 17 | threshold */
  int32_t first_bucket;  /* the bucket of entry 0, which also stands for every bucket below it */
  const float *values;   /* the 256 map values */
  int32_t zero_code;
  int32_t is_signed;
} codec_map;

static inline int positive_count(float a, const codec_map *m) {
  const uint32_t u = float_bits(a);
  const int32_t bucket = (int32_t)(u >> 16) - m->first_bucket;
  const int32_t entry = m->table[bucket > 0 ? bucket : 0];
  return (entry >> 17) + ((int32_t)(u & 0xFFFF) >= (entry & 0x1FFFF));
}

static inline uint8_t code_of(float y, const codec_map *m) {
  if (m->is_signed) {
    int pos = m->zero_code + positive_count(fabsf(y), m);
    return (uint8_t)(y < 0.0f ? 254 - (pos > 254 ? 254 : pos) : pos);
  }
  return (uint8_t)positive_count(y > 0.0f ? y : 0.0f, m);
}

static float block_absmax(const float *x, int64_t len, int *has_nan) {
  int64_t i = 0;
  float amax = 0.0f;
  int nan = 0;
#if defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 vmax = _mm256_setzero_ps(), vnan = _mm256_setzero_ps();
  for (; i + 8 <= len; i += 8) {
    __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
    vmax = _mm256_max_ps(vmax, a);
    vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  for (int k = 0; k < 8; k++) amax = lanes[k] > amax ? lanes[k] : amax;
  nan = _mm256_movemask_ps(vnan) != 0;
#endif
  for (; i < len; i++) {
    float a = fabsf(x[i]);
    amax = a > amax ? a : amax;
    nan |= a != a;
  }
  *has_nan = nan;
  return nan ? NAN : amax;
}

#if defined(__AVX2__)
/* One full block with a finite, nonzero absmax: 32 elements per round. */
static void encode_block_avx2(const float *x, uint8_t *codes, float absmax, const codec_map *m) {
  const int is_signed = m->is_signed;
  const __m256 scale = _mm256_set1_ps(absmax);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 zero = _mm256_setzero_ps();
  const __m256i first = _mm256_set1_epi32(m->first_bucket);
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  const __m256i low17 = _mm256_set1_epi32(0x1FFFF);
  const __m256i ones = _mm256_set1_epi32(-1);
  const __m256i zc = _mm256_set1_epi32(m->zero_code);
  const __m256i top = _mm256_set1_epi32(254);
  /* the packs below interleave 128-bit lanes; this restores memory order */
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int i = 0; i < BLOCK; i += 32) {
    __m256i c[4];
    for (int j = 0; j < 4; j++) {
      __m256 y = _mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), scale);
      __m256 a = is_signed ? _mm256_andnot_ps(sign, y) : _mm256_max_ps(y, zero);
      __m256i bucket = _mm256_max_epi32(
          _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), 16), first),
          _mm256_setzero_si256());
      __m256i entry = _mm256_i32gather_epi32((const int *)m->table, bucket, 4);
      __m256i low = _mm256_and_si256(_mm256_castps_si256(a), low16);
      __m256i threshold = _mm256_and_si256(entry, low17);
      /* low >= threshold: not (threshold > low); the mask is -1 where it holds */
      __m256i below = _mm256_cmpgt_epi32(threshold, low);
      __m256i n = _mm256_sub_epi32(_mm256_srli_epi32(entry, 17), _mm256_xor_si256(below, ones));
      if (is_signed) {
        __m256i pos = _mm256_add_epi32(zc, n);
        __m256i neg = _mm256_sub_epi32(top, _mm256_min_epi32(pos, top));
        __m256 negative = _mm256_cmp_ps(y, zero, _CMP_LT_OQ);
        n = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(pos),
                                                 _mm256_castsi256_ps(neg), negative));
      }
      c[j] = n;
    }
    __m256i packed = _mm256_packus_epi16(_mm256_packus_epi32(c[0], c[1]),
                                         _mm256_packus_epi32(c[2], c[3]));
    _mm256_storeu_si256((__m256i *)(codes + i), _mm256_permutevar8x32_epi32(packed, order));
  }
}
#endif

/* Encode numel elements of x (starting at a block boundary) into codes and one absmax per block,
 * on `threads` threads (ignored without OpenMP). */
void adaptim_quantize(const float *x, int64_t numel, uint8_t *codes, float *absmax,
                      const codec_map *m, int threads) {
  const int64_t blocks = (numel + BLOCK - 1) / BLOCK;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && numel >= PARALLEL_MIN)
#endif
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t start = b * BLOCK;
    const int64_t len = numel - start < BLOCK ? numel - start : BLOCK;
    const float *xb = x + start;
    uint8_t *cb = codes + start;
    int nan;
    const float amax = block_absmax(xb, len, &nan);
    absmax[start / BLOCK] = amax;
    if (nan || isinf(amax)) {
      /* infinities keep the end codes (the reference clamps them to +-1); every other element of
       * the block is 0 (x / inf) or NaN (x / NaN): the zero code */
      for (int64_t i = 0; i < len; i++) {
        cb[i] = isinf(xb[i]) ? code_of(xb[i] > 0 ? 1.0f : -1.0f, m) : (uint8_t)m->zero_code;
      }
      continue; /* next block */
    }
    const float scale = amax == 0.0f ? 1.0f : amax; /* an all-zero block: y = 0 */
#if defined(__AVX2__)
    if (len == BLOCK) {
      encode_block_avx2(xb, cb, scale, m);
      continue;
    }
#endif
    for (int64_t i = 0; i < len; i++) cb[i] = code_of(xb[i] / scale, m);
  }
}

#if defined(__AVX2__)
/* One full block: values[code] * absmax, 8 elements per round from one 8-byte load of codes and
 * one vector multiply and store. The per-element loop is bound by Zen 2's load and store ports
 * (a code load, a table load and a store per element): this one takes 1.4-1.5x less time there,
 * where AVX2 gathers gained nothing and rebuilding the values arithmetically (quantization.decode)
 * took twice as long. The same table reads and multiplications: the same values. */
static void decode_block_avx2(const uint8_t *codes, float *out, float absmax, const float *values) {
  const __m256 scale = _mm256_set1_ps(absmax);
  for (int i = 0; i < BLOCK; i += 8) {
    uint64_t w;
    memcpy(&w, codes + i, sizeof w);
    __m256 v = _mm256_setr_ps(values[w & 255], values[(w >> 8) & 255], values[(w >> 16) & 255],
                              values[(w >> 24) & 255], values[(w >> 32) & 255],
                              values[(w >> 40) & 255], values[(w >> 48) & 255], values[w >> 56]);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, scale));
  }
}
#endif

/* Decode numel codes (starting at a block boundary) with one absmax per block into out. */
void adaptim_dequantize(const uint8_t *codes, const float *absmax, int64_t numel, float *out,
                        const codec_map *m, int threads) {
  const float *values = m->values;
  const int64_t blocks = (numel + BLOCK - 1) / BLOCK;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && numel >= PARALLEL_MIN)
#endif
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t start = b * BLOCK;
    const int64_t len = numel - start < BLOCK ? numel - start : BLOCK;
    const float amax = absmax[start / BLOCK];
    const uint8_t *cb = codes + start;
    float *ob = out + start;
#if defined(__AVX2__)
    if (len == BLOCK && !isinf(amax)) {
      decode_block_avx2(cb, ob, amax, values);
      continue;
    }
#endif
    for (int64_t i = 0; i < len; i++) ob[i] = values[cb[i]] * amax;
    if (isinf(amax)) {
      for (int64_t i = 0; i < len; i++) {
        if (values[cb[i]] == 0.0f) ob[i] = 0.0f;
      }
    }
  }
}
