// Shared by visattn's CPU kernels: vectors of VISATTN_VECTOR_BYTES bytes through GCC's vector extensions (64 for
// AVX-512, 32 for AVX2 + FMA, 16 for NEON and the generic build; visattn/ops/native.py sets it per ISA level) and a
// vectorisable exp. Builds with GCC >= 9 or clang (GCC before 12 lacks __builtin_shufflevector: __builtin_shuffle
// stands in), with or without OpenMP.
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

#ifndef VISATTN_VECTOR_BYTES
#if defined(__AVX512F__)
#define VISATTN_VECTOR_BYTES 64
#elif defined(__AVX2__)
#define VISATTN_VECTOR_BYTES 32
#else
#define VISATTN_VECTOR_BYTES 16
#endif
#endif
static_assert(VISATTN_VECTOR_BYTES == 16 || VISATTN_VECTOR_BYTES == 32 || VISATTN_VECTOR_BYTES == 64,
              "VISATTN_VECTOR_BYTES must be 16, 32 or 64");

// Vector registers a register block may fill: 32 with AVX-512 and on AArch64, 16 on x86 without AVX-512.
#ifndef VISATTN_VECTOR_REGISTERS
#if defined(__AVX512F__) || defined(__aarch64__)
#define VISATTN_VECTOR_REGISTERS 32
#else
#define VISATTN_VECTOR_REGISTERS 16
#endif
#endif

#ifndef VISATTN_SHUFFLEVECTOR
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define VISATTN_SHUFFLEVECTOR 1
#else
#define VISATTN_SHUFFLEVECTOR 0
#endif
#endif

namespace visattn {

constexpr int64_t kVectorBytes = VISATTN_VECTOR_BYTES;
constexpr int kVectorRegisters = VISATTN_VECTOR_REGISTERS;

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
    // relative error about 2e-7 for x <= 88 (the kernels only take x <= 0). Inputs below -87 (and -inf) give 0, NaN
    // gives NaN: the clamps keep it, and only the exponent's integer conversion sees 0 in its place.
    const float lo = -87.0f;
    const float xc = std::min(std::max(x, lo), 88.0f);
    const float n = std::nearbyint(xc * 1.44269504088896341f);
    const float p = exp_reduced(xc, n);
    int32_t bits = (static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return x < lo ? 0.0f : p * scale;
}

inline float exp_of(float x) { return exp_approx(x); }
inline double exp_of(double x) { return std::exp(x); }

template <typename T>
struct Simd {
    static constexpr int64_t lanes = kVectorBytes / sizeof(T);
    typedef T vec __attribute__((vector_size(kVectorBytes)));
    using Int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
    typedef Int mask __attribute__((vector_size(kVectorBytes)));  // lane masks, as vector comparisons return them
    typedef uint8_t bytes __attribute__((vector_size(lanes)));
    static vec load(const T* p) {
        vec v;
        std::memcpy(&v, p, sizeof(v));
        return v;
    }
    static void store(T* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
    static vec splat(T x) { return vec{} + x; }
    // One instruction (x86's vmaxps): NaN where b is NaN, but b where only a is. The kernels' running maxima need
    // no more: every score they see also goes through exp, whose NaN reaches the row's sum and output (a max that
    // also kept a NaN in a cost 12% of the 2-D neighborhood forward).
    static vec max(vec a, vec b) { return a > b ? a : b; }
    static vec select(mask m, vec a, vec b) { return m ? a : b; }
    // Lanes whose byte in the bool array ``p`` is nonzero.
    static mask allowed(const uint8_t* p) {
        bytes b;
        std::memcpy(&b, p, sizeof(b));
        return __builtin_convertvector(b, mask) != 0;
    }
};

// Bool masks read a vector of bytes at a time are stored with rows padded to this many bytes (>= the lanes of every
// level: 16 floats with AVX-512).
constexpr int64_t kMaskAlign = 16;
static_assert(Simd<float>::lanes <= kMaskAlign, "a mask row must hold a vector of lanes");

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
#if defined(__AVX512F__) && VISATTN_VECTOR_BYTES == 64
    // Lanes below -87 (-inf included) are zeroed by the mask, whatever the polynomial made of them; NaN lanes pass
    // the clamp (x > 88 is false) and the mask (not less than -87, unordered) and come out NaN.
    const S::vec xc = x > 88.0f ? S::splat(88.0f) : x;
    const S::vec n = (xc * 1.44269504088896341f + magic) - magic;
    const S::vec p = exp_reduced(xc, n);
    const __mmask16 kept = _mm512_cmp_ps_mask(__m512(x), __m512(lo), _CMP_NLT_UQ);
    return S::vec(_mm512_maskz_scalef_ps(kept, __m512(p), __m512(n)));
#else
    // NaN lanes pass both clamps and the final select and come out NaN (p is NaN whatever the exponent bits are).
    const S::vec xc = S::max(lo, x > 88.0f ? S::splat(88.0f) : x);
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

// Lanes of a and b (b's numbered from lanes) picked by the constant indices I: __builtin_shufflevector (GCC >= 12,
// clang), else GCC's __builtin_shuffle with the indices as a vector.
template <typename T, int... I>
inline typename Simd<T>::vec shuffle(typename Simd<T>::vec a, typename Simd<T>::vec b,
                                     std::integer_sequence<int, I...>) {
    static_assert(sizeof...(I) == Simd<T>::lanes, "one index per lane");
#if VISATTN_SHUFFLEVECTOR
    return __builtin_shufflevector(a, b, I...);
#else
    return __builtin_shuffle(a, b, typename Simd<T>::mask{I...});
#endif
}

// Sum of the lanes of v, in log2(lanes) steps that add v to itself with lanes i and i ^ h swapped.
template <typename T, int H, size_t... I>
inline typename Simd<T>::vec swap_lanes(typename Simd<T>::vec v, std::index_sequence<I...>) {
    return shuffle<T>(v, v, std::integer_sequence<int, int(I ^ H)...>{});
}

template <typename T, int H = Simd<T>::lanes / 2>
inline T hsum(typename Simd<T>::vec v) {
    v += swap_lanes<T, H>(v, std::make_index_sequence<Simd<T>::lanes>{});
    if constexpr (H > 1)
        return hsum<T, H / 2>(v);
    else
        return v[0];
}

// Transpose of a lanes x lanes block held in ``lanes`` vectors, in log2(lanes) butterfly stages: the stage for
// bit s swaps bit s of the row index with bit s of the column index between rows i and i | s, one two-source
// shuffle per output row.
template <typename T, int L, int S, size_t... I>
inline typename Simd<T>::vec butterfly_low(typename Simd<T>::vec a, typename Simd<T>::vec b,
                                           std::index_sequence<I...>) {
    return shuffle<T>(a, b, std::integer_sequence<int, int((I & S) ? (L + I - S) : I)...>{});
}

template <typename T, int L, int S, size_t... I>
inline typename Simd<T>::vec butterfly_high(typename Simd<T>::vec a, typename Simd<T>::vec b,
                                            std::index_sequence<I...>) {
    return shuffle<T>(a, b, std::integer_sequence<int, int((I & S) ? (L + I) : (I + S))...>{});
}

template <typename T, int S>
inline void transpose_stage(typename Simd<T>::vec* rows) {
    constexpr int L = Simd<T>::lanes;
    using V = typename Simd<T>::vec;
    for (int i = 0; i < L; ++i) {
        if (i & S) continue;
        const V a = rows[i], b = rows[i | S];
        rows[i] = butterfly_low<T, L, S>(a, b, std::make_index_sequence<L>{});
        rows[i | S] = butterfly_high<T, L, S>(a, b, std::make_index_sequence<L>{});
    }
}

// Stages S = 1, 2, ..., lanes / 2.
template <typename T, int S = 1>
inline void transpose_block(typename Simd<T>::vec* rows) {
    if constexpr (S < Simd<T>::lanes) {
        transpose_stage<T, S>(rows);
        transpose_block<T, 2 * S>(rows);
    }
}

// Sums of ``lanes`` vectors, one per lane: lane j of the result is the sum of the lanes of v[j] (v is overwritten).
// Each level adds pairs of vectors after two two-source shuffles that keep alternate blocks of H lanes, halving both
// the number of vectors and the lanes each partial sum spans: about two shuffles per vector, against four for a
// transpose and a horizontal sum per vector otherwise.
template <typename T, int L, int H, bool Upper, size_t... I>
inline typename Simd<T>::vec pick_blocks(typename Simd<T>::vec a, typename Simd<T>::vec b,
                                         std::index_sequence<I...>) {
    return shuffle<T>(a, b, std::integer_sequence<int, ((int(I) < L / 2 ? 0 : L) + int(I) % (L / 2) / H * 2 * H +
                                                         int(I) % H + (Upper ? H : 0))...>{});
}

template <typename T, int H>
inline void sum_level(typename Simd<T>::vec* v) {
    constexpr int L = Simd<T>::lanes;
    for (int m = 0; m < H; ++m)
        v[m] = pick_blocks<T, L, H, false>(v[2 * m], v[2 * m + 1], std::make_index_sequence<L>{}) +
               pick_blocks<T, L, H, true>(v[2 * m], v[2 * m + 1], std::make_index_sequence<L>{});
}

// Levels H = lanes / 2, ..., 1.
template <typename T, int H = Simd<T>::lanes / 2>
inline typename Simd<T>::vec row_sums(typename Simd<T>::vec* v) {
    sum_level<T, H>(v);
    if constexpr (H > 1)
        return row_sums<T, H / 2>(v);
    else
        return v[0];
}

}  // namespace visattn
