"""The C source of `native_gemv`'s kernel (AVX512-VNNI GEMV over 4-row blocks); see that module for the method."""

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
/* int4: software prefetch distance (into L2) along the one weight stream; int8 streams best without one
   (measured on a 4096 x 11008 layer at one thread: int8 74-77% -> 82-85% of a paired read without it,
   int4 T0 at 8 KB 66-70% -> T1 at 8 KB with the two-row layout 84-90%) */
#define AHEAD4 8192

/* Activations, per chunk of c features of a row (c % 64 == 0, c <= 256): x16 = round(x / xs) with
   |x16| <= 32639 and xs = max|x| / 32639, split exactly as x16 = 256·xh + xl with xh, xl in [-127, 127]
   (signed bytes, the second operand of vpdpbusd). lanes[16] per chunk: offset · the sum of x16 over the
   features lane l of the kernel's accumulators sees (4l..4l+3 of every 64), the codes' offset term.
   xsum: Σ x over each chunk as the kernel sees it, or with HALF (groups of 32, c == 64) over each half
   (lanes 0-7 see features 0-31, lanes 8-15 features 32-63), two per chunk. */
static void prepare_rows(const int A8, const int HALF, const float* x, int8_t* xh, int8_t* xl, float* xs, float* xsum,
                         int32_t* lanes, int64_t M, int64_t K, int64_t c, int32_t offset) {
  const int64_t C = K / c;
  const int32_t top_code = A8 ? 127 : 32639;
  const __m512i lim = _mm512_set1_epi32(top_code), nlim = _mm512_set1_epi32(-top_code), half = _mm512_set1_epi32(128);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t j = 0; j < C; ++j) {
      const float* xr = x + m * K + j * c;
      __m512 mx = _mm512_setzero_ps();
      for (int64_t k = 0; k < c; k += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xr + k)));
      const float top = _mm512_reduce_max_ps(mx);
      const float scale = top > 0.0f ? top / (float)top_code : 1.0f;
      const __m512 inv = _mm512_set1_ps(1.0f / scale);
      __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
      for (int64_t k = 0; k < c; k += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xr + k), inv));
        q = _mm512_max_epi32(_mm512_min_epi32(q, lim), nlim);
        if (A8) {
          _mm_storeu_si128((__m128i*)(xh + m * K + j * c + k), _mm512_cvtepi32_epi8(q));
        } else {
          const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(q, half), 8);
          const __m512i l = _mm512_sub_epi32(q, _mm512_slli_epi32(h, 8));
          _mm_storeu_si128((__m128i*)(xh + m * K + j * c + k), _mm512_cvtepi32_epi8(h));
          _mm_storeu_si128((__m128i*)(xl + m * K + j * c + k), _mm512_cvtepi32_epi8(l));
        }
        acc[(k % 64) / 16] = _mm512_add_epi32(acc[(k % 64) / 16], q); /* features k % 64 .. +15 */
      }
      /* acc[v][i] holds feature 16v + i (mod 64); lane l wants features 4l..4l+3 = acc[l / 4][4(l % 4) + t] */
      int32_t a[64];
      for (int v = 0; v < 4; ++v) _mm512_storeu_si512((void*)(a + 16 * v), acc[v]);
      int32_t* out = lanes + (m * C + j) * 16;
      int32_t part[2] = {0, 0};
      for (int l = 0; l < 16; ++l) {
        const int32_t lane = a[4 * l] + a[4 * l + 1] + a[4 * l + 2] + a[4 * l + 3];
        out[l] = offset * lane;
        part[l / 8] += lane;
      }
      xs[m * C + j] = scale;
      if (HALF) {
        xsum[2 * (m * C + j)] = scale * (float)part[0];
        xsum[2 * (m * C + j) + 1] = scale * (float)part[1];
      } else {
        xsum[m * C + j] = scale * (float)(part[0] + part[1]);
      }
    }
  }
}

/* y[m*N + n] = sum_g s[n*G + g] · sum_{k in g} x[m*K + k] · (u[n, k] - offset), for unsigned codes u:
   bytes (bits 8) or nibbles (bits 4). Layout: blocks of 4 rows, 64 features of each row in turn:
   64 bytes (int8), or per 64 features 2 x 64 bytes (int4: byte j of the first holds feature j of rows
   0 and 1 of the block, low and high nibble; the second, of rows 2 and 3).
   Each 64 features of a row: two vpdpbusd (u8 codes × s8 halves of the activations) into int32 lanes,
   exact; per chunk (acc_h << 8) + acc_l - offset terms is exact in int32, then scaled in float. */
static inline float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

/* One call's operands, shared by the row blocks. */
typedef struct {
  const uint8_t* w;
  const float *s, *zs, *bias, *xs, *gsum;
  const int32_t* lanes;
  const int8_t *xh, *xl;
  float* y;
  int64_t N, K, G, C, c, per_group, row, step;
} Ctx;

/* Output rows 4b..4b+3 for activation rows m..m+MB-1 (MB = 1 or 2, a constant after inlining). HALF: groups
   of 32 features in chunks of 64, so lanes 0-7 of a chunk take group 2j's scale and lanes 8-15 group 2j+1's. */
static inline __attribute__((always_inline)) void rows4(const Ctx* p, int64_t b, int64_t m, const int MB,
                                                        const int BITS, const int A8, const int HALF) {
  const int64_t N = p->N, K = p->K, G = p->G, C = p->C, c = p->c, per_group = p->per_group, step = p->step;
  const float* s = p->s;
  const int8_t *xh = p->xh, *xl = p->xl;
  const int32_t* lanes = p->lanes;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  int64_t r[4]; /* scale rows; the codes of a tail block's missing rows are zeros */
  for (int i = 0; i < 4; ++i) r[i] = (b * 4 + i < N) ? b * 4 + i : N - 1;
  const uint8_t* wb = p->w + b * 4 * p->row;
  __m512 t[2][4];
  float z[2][4] = {{0.0f}}; /* Σ_g zs · Σ x_g per row */
  for (int u = 0; u < MB; ++u)
    for (int i = 0; i < 4; ++i) {
      t[u][i] = _mm512_setzero_ps();
      if (p->zs) z[u][i] = dot(p->zs + r[i] * G, p->gsum + (m + u) * G, G);
    }
  for (int64_t j = 0; j < C; ++j) {
    /* the low halves start at -offset terms, so (h << 8) + l is the chunk's exact sum */
    __m512i h[2][4], l[2][4];
    for (int u = 0; u < MB; ++u) {
      const __m512i corr =
          _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_loadu_si512((const void*)(lanes + ((m + u) * C + j) * 16)));
      for (int i = 0; i < 4; ++i) {
        h[u][i] = A8 ? corr : _mm512_setzero_si512();
        l[u][i] = A8 ? _mm512_setzero_si512() : corr;
      }
    }
    for (int64_t k = j * c; k < (j + 1) * c; k += 64) {
      const uint8_t* wk = wb + 4 * (k / 64) * step;
      __m512i wv[4];
      if (BITS == 8) { /* the hardware prefetcher keeps up with this stream alone */
        for (int i = 0; i < 4; ++i) wv[i] = _mm512_loadu_si512((const void*)(wk + 64 * i));
      } else { /* 64 bytes hold two rows' 64 codes: the low nibbles, then the high ones */
        _mm_prefetch((const char*)(wk + AHEAD4), _MM_HINT_T1);
        _mm_prefetch((const char*)(wk + AHEAD4 + 64), _MM_HINT_T1);
        for (int i = 0; i < 2; ++i) {
          const __m512i pair = _mm512_loadu_si512((const void*)(wk + 64 * i));
          wv[2 * i] = _mm512_and_si512(pair, mask);
          wv[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(pair, 4), mask);
        }
      }
      for (int u = 0; u < MB; ++u) {
        const __m512i xhv = _mm512_loadu_si512((const void*)(xh + (m + u) * K + k));
        for (int i = 0; i < 4; ++i) h[u][i] = _mm512_dpbusd_epi32(h[u][i], wv[i], xhv);
        if (!A8) {
          const __m512i xlv = _mm512_loadu_si512((const void*)(xl + (m + u) * K + k));
          for (int i = 0; i < 4; ++i) l[u][i] = _mm512_dpbusd_epi32(l[u][i], wv[i], xlv);
        }
      }
    }
    const int64_t g = HALF ? 2 * j : per_group == 1 ? j : j / per_group;
    __m512 sg[4];
    for (int i = 0; i < 4; ++i) /* this chunk's group scale(s) of row i */
      sg[i] = HALF ? _mm512_permutexvar_ps(
                         halves, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)(s + r[i] * G + g)))))
                   : _mm512_set1_ps(s[r[i] * G + g]);
    for (int u = 0; u < MB; ++u) {
      const __m512 sx = _mm512_set1_ps(p->xs[(m + u) * C + j]);
      for (int i = 0; i < 4; ++i) {
        const __m512 exact =
            _mm512_cvtepi32_ps(A8 ? h[u][i] : _mm512_add_epi32(_mm512_slli_epi32(h[u][i], 8), l[u][i]));
        /* one scale per row (G == 1) is applied once at the end */
        t[u][i] = _mm512_fmadd_ps(G == 1 ? exact : _mm512_mul_ps(exact, sg[i]), sx, t[u][i]);
      }
    }
  }
  for (int u = 0; u < MB; ++u)
    for (int i = 0; i < 4 && b * 4 + i < N; ++i) {
      const float out = _mm512_reduce_add_ps(t[u][i]) * (G == 1 ? s[r[i]] : 1.0f);
      p->y[(m + u) * N + b * 4 + i] = out - z[u][i] + (p->bias ? p->bias[b * 4 + i] : 0.0f);
    }
}

/* Scratch for the prepared activations: one buffer per calling thread, grown as needed, kept. */
static __thread uint8_t* scratch = 0;
static __thread int64_t scratch_bytes = 0;

/* zs (N × G, may be null): s · z per group, a zero point's term  y -= Σ_g zs[n, g] · Σ_{k in g} x;
   bias (N, may be null) is added. Returns 0, 1 for shapes it cannot take, 2 when out of memory. */
int ms_gemv(const float* x, const uint8_t* w, const float* s, const float* zs, const float* bias, float* y,
            int64_t M, int64_t N, int64_t K, int64_t gsize, int64_t c, int bits, int offset, int abits, int threads) {
  const int half = gsize == 32 && c == 64; /* groups of 32: two group scales per 64-feature chunk */
  if ((bits != 8 && bits != 4) || (abits != 16 && abits != 8) || c % 64 || c > 256 || K % c ||
      (!half && gsize % c) || K % gsize)
    return 1;
  const int a8 = abits == 8;
  const int64_t chunks = M * (K / c), sums = half ? 2 * chunks : chunks;
  const int64_t need = 2 * M * K + chunks * (64 + 4) + sums * 4 + M * (K / gsize) * 4 + 64;
  if (need > scratch_bytes) {
    free(scratch);
    scratch = (uint8_t*)aligned_alloc(64, (need + 63) / 64 * 64);
    scratch_bytes = scratch ? need : 0;
    if (!scratch) return 2;
  }
  int32_t* lanes = (int32_t*)scratch; /* 64-byte aligned: 16 int32 per chunk */
  float* xs = (float*)(scratch + chunks * 64);
  float* xsum = xs + chunks;
  const int64_t G = K / gsize, C = K / c, per_group = gsize / c, blocks = (N + 3) / 4;
  float* gsum = xsum + sums; /* Σ x per group of a row, for the zero term */
  int8_t* xh = (int8_t*)(gsum + M * G);
  int8_t* xl = xh + M * K;
  prepare_rows(a8, half, x, xh, xl, xs, xsum, lanes, M, K, c, offset);
  for (int64_t i = 0; i < M * G; ++i) {
    float part = half ? xsum[i] : 0.0f;
    for (int64_t j = i * per_group; j < (i + 1) * per_group; ++j) part += xsum[j];
    gsum[i] = part;
  }
  const Ctx k = {w, s, zs, bias, xs, gsum, lanes, xh, xl, y, N, K, G, C, c, per_group,
                 bits == 8 ? K : K / 2, bits == 8 ? 64 : 32};
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t m = 0;
    /* int4: two activation rows share each unpacked weight vector (measured: 10-15% at 8-32 rows) */
#define RUN(BITS, A8, HALF)                                                        \
  do {                                                                             \
    if (BITS == 4)                                                                 \
      for (; m + 2 <= M; m += 2) rows4(&k, b, m, 2, BITS, A8, HALF);               \
    for (; m < M; ++m) rows4(&k, b, m, 1, BITS, A8, HALF);                         \
  } while (0)
    if (half) {
      if (bits == 4) { if (a8) RUN(4, 1, 1); else RUN(4, 0, 1); }
      else { if (a8) RUN(8, 1, 1); else RUN(8, 0, 1); }
    } else {
      if (bits == 4) { if (a8) RUN(4, 1, 0); else RUN(4, 0, 0); }
      else { if (a8) RUN(8, 1, 0); else RUN(8, 0, 0); }
    }
#undef RUN
  }
  return 0;
}

/* The same with the layer's operands prepared once (`Plan`): p = {codes, scales, zero term or 0, N, K,
   group, chunk, bits, offset, activation bits}; only the activations, output, batch rows and bias change. */
int ms_gemv_plan(const float* x, float* y, int64_t M, const float* bias, const int64_t* p, int threads) {
  return ms_gemv(x, (const uint8_t*)p[0], (const float*)p[1], (const float*)p[2], bias, y, M, p[3], p[4], p[5],
                 p[6], (int)p[7], (int)p[8], (int)p[9], threads);
}
"""
