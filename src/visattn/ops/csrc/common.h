// Shared by visattn's CPU kernels: 64-byte vectors through GCC's vector extensions (lowered to AVX-512, AVX2 or
// SSE by -march=native) and a vectorisable exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace visattn {

// e^x after range reduction: with x = n ln 2 + r (n = round(x log2 e), ln 2 in two parts as in Cephes' expf),
// e^r ~ 1 + r (c1 + r (c2 + ... + r c5)), a degree-5 minimax fit of relative error on |r| <= ln 2 / 2 (9e-8 in
// exact arithmetic, under 2e-7 evaluated in float: two ulp); V is float or a float vector.
template <typename V>
inline V exp_reduced(V x, V n) {
    V r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    V p = V{} + 8.290315047e-3f;
    p = p * r + 4.189793020e-2f;
    p = p * r + 1.666763574e-1f;
    p = p * r + 4.999915063e-1f;
    p = p * r + 9.999997020e-1f;
    return p * r + 1.0f;
}

inline float exp_approx(float x) {
    // expf: exp_reduced, then 2^n from the exponent bits. Branch-free so loops over it vectorise;
    // relative error about 2e-7. Inputs below -87 (and -inf) give 0.
    const float lo = -87.0f;
    const float xc = std::min(std::max(x, lo), 88.0f);
    const float n = std::nearbyint(xc * 1.44269504088896341f);
    const float p = exp_reduced(xc, n);
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return x < lo ? 0.0f : p * scale;
}

inline float exp_of(float x) { return exp_approx(x); }
inline double exp_of(double x) { return std::exp(x); }

template <typename T>
struct Simd {
    static constexpr int64_t lanes = 64 / sizeof(T);
    typedef T vec __attribute__((vector_size(64)));
    using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    typedef Int mask __attribute__((vector_size(64)));  // lane masks, as vector comparisons return them
    typedef uint8_t bytes __attribute__((vector_size(lanes)));
    static vec load(const T* p) {
        vec v;
        std::memcpy(&v, p, sizeof(v));
        return v;
    }
    static void store(T* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
    static vec splat(T x) { return vec{} + x; }
    static vec max(vec a, vec b) { return a > b ? a : b; }
    static vec select(mask m, vec a, vec b) { return m ? a : b; }
    // Lanes whose byte in the bool array ``p`` is nonzero.
    static mask allowed(const uint8_t* p) {
        bytes b;
        std::memcpy(&b, p, sizeof(b));
        return __builtin_convertvector(b, mask) != 0;
    }
};

// Bool masks read a vector of bytes at a time are stored with rows padded to this many bytes.
constexpr int64_t kMaskAlign = 16;

// exp of every lane: exp_approx on whole vectors for float, std::exp per lane for double.
template <typename T>
inline typename Simd<T>::vec exp_vec(typename Simd<T>::vec x) {
    for (int64_t i = 0; i < Simd<T>::lanes; ++i) x[i] = std::exp(x[i]);
    return x;
}

template <>
inline Simd<float>::vec exp_vec<float>(Simd<float>::vec x) {
    // exp_approx on whole vectors: n = round(x log2 e) (adding and subtracting 1.5 * 2^23), exp_reduced, then p 2^n:
    // vscalefps on AVX-512 (zeroing lanes below -87 in the same step), exponent bits elsewhere.
    using S = Simd<float>;
    const S::vec lo = S::splat(-87.0f), magic = S::splat(12582912.0f);
#if defined(__AVX512F__)
    // Lanes below -87 (-inf and NaN included) are zeroed by the mask, whatever the polynomial made of them.
    const S::vec xc = x < 88.0f ? x : S::splat(88.0f);
    const S::vec n = (xc * 1.44269504088896341f + magic) - magic;
    const S::vec p = exp_reduced(xc, n);
    const __mmask16 kept = _mm512_cmp_ps_mask(__m512(x), __m512(lo), _CMP_GE_OQ);
    return S::vec(_mm512_maskz_scalef_ps(kept, __m512(p), __m512(n)));
#else
    const S::vec xc = S::max(lo, x < 88.0f ? x : S::splat(88.0f));
    const S::vec n = (xc * 1.44269504088896341f + magic) - magic;
    const S::vec p = exp_reduced(xc, n);
    const S::mask bits = (__builtin_convertvector(n, S::mask) + 127) << 23;
    S::vec scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return S::select(x < lo, S::splat(0.0f), p * scale);
#endif
}

struct Strides {
    int64_t b, h, n;
};

// Transpose of a lanes x lanes block held in ``lanes`` vectors, in log2(lanes) butterfly stages: the stage for
// bit s swaps bit s of the row index with bit s of the column index between rows i and i | s, one two-source
// shuffle per output row.
template <typename V, int L, int S, size_t... I>
inline V butterfly_low(V a, V b, std::index_sequence<I...>) {
    return __builtin_shufflevector(a, b, ((I & S) ? (L + I - S) : I)...);
}

template <typename V, int L, int S, size_t... I>
inline V butterfly_high(V a, V b, std::index_sequence<I...>) {
    return __builtin_shufflevector(a, b, ((I & S) ? (L + I) : (I + S))...);
}

template <typename T, int S>
inline void transpose_stage(typename Simd<T>::vec* rows) {
    constexpr int L = Simd<T>::lanes;
    using V = typename Simd<T>::vec;
    for (int i = 0; i < L; ++i) {
        if (i & S) continue;
        const V a = rows[i], b = rows[i | S];
        rows[i] = butterfly_low<V, L, S>(a, b, std::make_index_sequence<L>{});
        rows[i | S] = butterfly_high<V, L, S>(a, b, std::make_index_sequence<L>{});
    }
}

template <typename T>
inline void transpose_block(typename Simd<T>::vec* rows) {
    transpose_stage<T, 1>(rows);
    transpose_stage<T, 2>(rows);
    transpose_stage<T, 4>(rows);
    if constexpr (Simd<T>::lanes == 16) transpose_stage<T, 8>(rows);
}

// Sums of ``lanes`` vectors, one per lane: lane j of the result is the sum of the lanes of v[j] (v is overwritten).
// Each level adds pairs of vectors after two two-source shuffles that keep alternate blocks of H lanes, halving both
// the number of vectors and the lanes each partial sum spans: about two shuffles per vector, against four for a
// transpose and a horizontal sum per vector otherwise.
template <typename V, int L, int H, bool Upper, size_t... I>
inline V pick_blocks(V a, V b, std::index_sequence<I...>) {
    return __builtin_shufflevector(
        a, b, ((int(I) < L / 2 ? 0 : L) + int(I) % (L / 2) / H * 2 * H + int(I) % H + (Upper ? H : 0))...);
}

template <typename T, int H>
inline void sum_level(typename Simd<T>::vec* v) {
    constexpr int L = Simd<T>::lanes;
    using V = typename Simd<T>::vec;
    for (int m = 0; m < H; ++m)
        v[m] = pick_blocks<V, L, H, false>(v[2 * m], v[2 * m + 1], std::make_index_sequence<L>{}) +
               pick_blocks<V, L, H, true>(v[2 * m], v[2 * m + 1], std::make_index_sequence<L>{});
}

template <typename T>
inline typename Simd<T>::vec row_sums(typename Simd<T>::vec* v) {
    constexpr int L = Simd<T>::lanes;
    if constexpr (L == 16) sum_level<T, 8>(v);
    sum_level<T, 4>(v);
    sum_level<T, 2>(v);
    sum_level<T, 1>(v);
    return v[0];
}

}  // namespace visattn
