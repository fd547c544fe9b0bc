// Shared by visattn's CPU kernels: 64-byte vectors through GCC's vector extensions (lowered to AVX-512, AVX2 or
// SSE by -march=native) and a vectorisable exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

namespace visattn {

inline float exp_approx(float x) {
    // Cephes-style expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial for e^r, 2^n from the exponent bits.
    // Branch-free so loops over it vectorise; relative error about 2e-7. Inputs below -87 (and -inf) give 0.
    const float lo = -87.0f;
    float xc = std::min(std::max(x, lo), 88.0f);
    float n = std::nearbyint(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
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
    static vec load(const T* p) {
        vec v;
        std::memcpy(&v, p, sizeof(v));
        return v;
    }
    static void store(T* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
};

struct Strides {
    int64_t b, h, n;
};

// Horizontal max and sum of a vector by halving: log2(lanes) shuffles, lane 0 holds the result.
template <typename V, int L, int H, size_t... I>
inline V fold_half(V v, std::index_sequence<I...>) {
    return __builtin_shufflevector(v, v, ((I + H) % L)...);
}

template <typename T>
inline T reduce_max(typename Simd<T>::vec v) {
    constexpr int L = Simd<T>::lanes;
    using V = typename Simd<T>::vec;
    V x = fold_half<V, L, L / 2>(v, std::make_index_sequence<L>{});
    v = v > x ? v : x;
    x = fold_half<V, L, L / 4>(v, std::make_index_sequence<L>{});
    v = v > x ? v : x;
    x = fold_half<V, L, L / 8>(v, std::make_index_sequence<L>{});
    v = v > x ? v : x;
    if constexpr (L == 16) {
        x = fold_half<V, L, 1>(v, std::make_index_sequence<L>{});
        v = v > x ? v : x;
    }
    return v[0];
}

template <typename T>
inline T reduce_sum(typename Simd<T>::vec v) {
    constexpr int L = Simd<T>::lanes;
    using V = typename Simd<T>::vec;
    v += fold_half<V, L, L / 2>(v, std::make_index_sequence<L>{});
    v += fold_half<V, L, L / 4>(v, std::make_index_sequence<L>{});
    v += fold_half<V, L, L / 8>(v, std::make_index_sequence<L>{});
    if constexpr (L == 16) v += fold_half<V, L, 1>(v, std::make_index_sequence<L>{});
    return v[0];
}

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

}  // namespace visattn
