#pragma once
// Shared by the decode kernels (skinny_linear.cpp, decode_attention.cpp); internal to the SDK, not installed.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace dschat::detail {

// The sums of 16 vectors' lanes as one vector (lane i: the sum of v[i]) through one transpose-and-add tree: 45
// instructions per 16 sums, against ~8 per sum for _mm512_reduce_add_ps one by one (with K = 576 the one-by-one
// reductions added half again the instructions of the skinny kernel's dot products themselves).
__attribute__((target("avx512f"))) inline __m512 sum16(const __m512 (&v)[16]) {
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit chunk: partial sums of v[2i] at 0, 2 and of v[2i+1] at 1, 3
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per chunk: the chunk's sums of v[4i .. 4i+3]
    const __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);  // moved as pairs
    y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i)  // chunks paired: (0+1, 2+3) of y[2i], then of y[2i+1]
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
  // Chunk i holds y[i]'s totals: lane 4i + j is the sum of v[4i + j].
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
}

}  // namespace dschat::detail
#endif
