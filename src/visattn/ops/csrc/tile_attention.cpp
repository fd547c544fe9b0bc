// Fused tile attention: softmax attention over lists of (query tile, key segments), each segment optionally under
// a bool mask, with GEMM-style register blocking: the forward engine of the neighborhood, window, grid, halo, strip,
// sliding-window and block-sparse (radial, PARO) fast paths.
//
// Per batch-head and tile, with the tile's queries Q (nq x d) and the keys of its segments taken in chunks of
// KC = 64, it computes S = scale * Q K^T for the chunk (8 queries x 2 vectors of keys per register block, K
// transposed into scratch), masks S to -inf where the segment's mask says 0, and folds the chunk into the online
// softmax (Flash Attention's running max m and sum l, rescaling the output accumulator by exp(m_old - m_new)),
// then O += P V (8 or 4 queries x two vectors of the value dims per block). Finally out_i = O_i / l_i and
// lse_i = m_i + log l_i; a query that saw no key gets 0 and lse = -inf. Scores never leave per-thread scratch.
//
// Built on demand by visattn/ops/native.py and called through ctypes (visattn/ops/tile_kernel.py).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

using namespace visattn;

constexpr int64_t kChunk = 64;
constexpr int64_t kRows = 8;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Tiles {
    int64_t count;
    const int64_t *q_ptr, *q_idx, *seg_ptr, *key_ptr, *k_idx, *mask_off;
    const uint8_t* masks;
};

template <typename T>
struct Workspace {
    int64_t nq_pad, d, dv_pad;
    std::vector<T> q, kt, vs, s, o, m, l;
    Workspace(int64_t max_q, int64_t d, int64_t dv)
        : nq_pad(round_up(std::max<int64_t>(max_q, 1), kRows / 2)),
          d(d),
          dv_pad(round_up(dv, Simd<T>::lanes)),
          q(nq_pad * d),
          kt(d * kChunk),
          vs(kChunk * dv_pad),
          s(nq_pad * kChunk),
          o(nq_pad * dv_pad),
          m(nq_pad),
          l(nq_pad) {}
};

// Rows of a tile are taken 8 at a time, then 4 (tiles are padded to a multiple of 4 rows).
template <typename T, int R>
void scores_block(Workspace<T>& w, int64_t width, int64_t u) {
    using S = Simd<T>;
    for (int64_t j = 0; j < width; j += 2 * S::lanes) {
        typename S::vec acc[R][2] = {};
        for (int64_t c = 0; c < w.d; ++c) {
            const typename S::vec k0 = S::load(&w.kt[c * kChunk + j]);
            const typename S::vec k1 = S::load(&w.kt[c * kChunk + j + S::lanes]);
            for (int r = 0; r < R; ++r) {
                const T qv = w.q[(u + r) * w.d + c];
                acc[r][0] += qv * k0;
                acc[r][1] += qv * k1;
            }
        }
        for (int r = 0; r < R; ++r) {
            S::store(&w.s[(u + r) * kChunk + j], acc[r][0]);
            S::store(&w.s[(u + r) * kChunk + j + S::lanes], acc[r][1]);
        }
    }
}

// S[rows x width] = Q[rows x d] Kt[d x width] (rows of S and Kt kChunk apart), register blocks of 8 (then 4) rows x
// 2 vectors.
template <typename T>
void scores(Workspace<T>& w, int64_t width, int64_t rows) {
    int64_t u = 0;
    for (; u + kRows <= rows; u += kRows) scores_block<T, kRows>(w, width, u);
    for (; u < rows; u += kRows / 2) scores_block<T, kRows / 2>(w, width, u);
}

// O[u:u+R] += P[u:u+R, :keys] V[keys x dv_pad] on the value dims [c, c + B lanes).
template <typename T, int R, int B>
void accumulate_block(Workspace<T>& w, int64_t keys, int64_t u, int64_t c) {
    using S = Simd<T>;
    typename S::vec acc[R][B];
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < B; ++b) acc[r][b] = S::load(&w.o[(u + r) * w.dv_pad + c + b * S::lanes]);
    for (int64_t j = 0; j < keys; ++j) {
        typename S::vec vv[B];
        for (int b = 0; b < B; ++b) vv[b] = S::load(&w.vs[j * w.dv_pad + c + b * S::lanes]);
        for (int r = 0; r < R; ++r) {
            const T p = w.s[(u + r) * kChunk + j];
            for (int b = 0; b < B; ++b) acc[r][b] += p * vv[b];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < B; ++b) S::store(&w.o[(u + r) * w.dv_pad + c + b * S::lanes], acc[r][b]);
}

template <typename T, int R>
void accumulate_rows(Workspace<T>& w, int64_t keys, int64_t u) {
    const int64_t lanes = Simd<T>::lanes;
    int64_t c = 0;
    for (; c + 2 * lanes <= w.dv_pad; c += 2 * lanes) accumulate_block<T, R, 2>(w, keys, u, c);
    if (c < w.dv_pad) accumulate_block<T, R, 1>(w, keys, u, c);
}

// O[rows x dv_pad] += P[rows x keys] V[keys x dv_pad], register blocks of 8 (then 4) rows x 2 vectors.
template <typename T>
void accumulate(Workspace<T>& w, int64_t keys, int64_t rows) {
    int64_t u = 0;
    for (; u + kRows <= rows; u += kRows) accumulate_rows<T, kRows>(w, keys, u);
    for (; u < rows; u += kRows / 2) accumulate_rows<T, kRows / 2>(w, keys, u);
}

// Kt[d x kChunk] (keys transposed, zero past kc) and Vs[kChunk x dv_pad] from the key rows ``idx[0:kc]``; when
// the head dim is a multiple of the vector width, lanes x lanes blocks are transposed in registers.
template <typename T>
void load_chunk(Workspace<T>& w, const T* kb, const T* vb, const int64_t* idx, int64_t kc, int64_t width,
                int64_t dim, int64_t dim_v, int64_t kn, int64_t vn) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    for (int64_t j = 0; j < kc; ++j) {
        std::memcpy(&w.vs[j * w.dv_pad], vb + idx[j] * vn, dim_v * sizeof(T));
        std::fill(&w.vs[j * w.dv_pad + dim_v], &w.vs[(j + 1) * w.dv_pad], T(0));
    }
    if (dim % L == 0) {
        typename S::vec rows[L];
        for (int64_t j0 = 0; j0 < width; j0 += L) {
            for (int64_t c0 = 0; c0 < dim; c0 += L) {
                for (int64_t r = 0; r < L; ++r)
                    rows[r] = j0 + r < kc ? S::load(kb + idx[j0 + r] * kn + c0) : typename S::vec{};
                transpose_block<T>(rows);
                for (int64_t r = 0; r < L; ++r) S::store(&w.kt[(c0 + r) * kChunk + j0], rows[r]);
            }
        }
        return;
    }
    for (int64_t j = 0; j < width; ++j) {
        const T* krow = j < kc ? kb + idx[j] * kn : nullptr;
        for (int64_t c = 0; c < dim; ++c) w.kt[c * kChunk + j] = krow ? krow[c] : T(0);
    }
}

// Folds one row of a score chunk into the online softmax: masks it (and the padding from ``kc`` to ``width``, a
// multiple of two vectors) to -inf,
// rescales the running sum ``l`` and output row ``o`` to the new maximum ``m``, and leaves exp(s - m) in ``s``
// (0 where masked). Whole-chunk vector loops; a row that has seen no key yet keeps m = -inf and s = 0.
template <typename T>
void fold_row(T* s, const uint8_t* mask, int64_t kc, int64_t width, T& m, T& l, T* o, int64_t dv_pad) {
    using S = Simd<T>;
    for (int64_t j = kc; j < width; ++j) s[j] = T(-INFINITY);
    if (mask)
        for (int64_t j = 0; j < kc; ++j) s[j] = mask[j] ? s[j] : T(-INFINITY);
    typename S::vec top = S::load(s);
    for (int64_t c = S::lanes; c < width; c += S::lanes) {
        const typename S::vec x = S::load(s + c);
        top = x > top ? x : top;
    }
    const T new_m = std::max(m, reduce_max<T>(top));
    if (new_m == T(-INFINITY)) {
        std::fill(s, s + width, T(0));
        return;
    }
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) s[j] = exp_of(s[j] - new_m);
    typename S::vec sum = S::load(s);
    for (int64_t c = S::lanes; c < width; c += S::lanes) sum += S::load(s + c);
    const T total = reduce_sum<T>(sum);
    const T alpha = exp_of(m - new_m);
    if (alpha != T(1))
        for (int64_t c = 0; c < dv_pad; c += S::lanes) S::store(o + c, S::load(o + c) * alpha);
    l = l * alpha + total;
    m = new_m;
}

template <typename T>
void run_tile(const T* qb, const T* kb, const T* vb, T* ob, T* lseb, int64_t dim, int64_t dim_v, Strides qs,
              Strides ks, Strides vs, Strides os, int64_t lse_n, const Tiles& tiles, int64_t t, T scale,
              Workspace<T>& w) {
    const int64_t q0 = tiles.q_ptr[t], nq = tiles.q_ptr[t + 1] - q0, rows = round_up(nq, kRows / 2);
    const int64_t* qi = tiles.q_idx + q0;
    std::fill(w.q.begin(), w.q.begin() + rows * dim, T(0));
    for (int64_t u = 0; u < nq; ++u) {
        const T* row = qb + qi[u] * qs.n;
        for (int64_t c = 0; c < dim; ++c) w.q[u * dim + c] = row[c] * scale;
    }
    std::fill(w.o.begin(), w.o.begin() + rows * w.dv_pad, T(0));
    std::fill(w.m.begin(), w.m.end(), T(-INFINITY));
    std::fill(w.l.begin(), w.l.end(), T(0));
    for (int64_t seg = tiles.seg_ptr[t]; seg < tiles.seg_ptr[t + 1]; ++seg) {
        const int64_t k0 = tiles.key_ptr[seg], nk = tiles.key_ptr[seg + 1] - k0;
        const uint8_t* mask = tiles.mask_off[seg] >= 0 ? tiles.masks + tiles.mask_off[seg] : nullptr;
        for (int64_t j0 = 0; j0 < nk; j0 += kChunk) {
            const int64_t kc = std::min(kChunk, nk - j0);
            const int64_t width = round_up(kc, 2 * Simd<T>::lanes);
            load_chunk(w, kb, vb, tiles.k_idx + k0 + j0, kc, width, dim, dim_v, ks.n, vs.n);
            scores(w, width, rows);
            for (int64_t u = 0; u < nq; ++u)
                fold_row(&w.s[u * kChunk], mask ? mask + u * nk + j0 : nullptr, kc, width, w.m[u], w.l[u],
                         &w.o[u * w.dv_pad], w.dv_pad);
            accumulate(w, kc, rows);
        }
    }
    for (int64_t u = 0; u < nq; ++u) {
        T* orow = ob + qi[u] * os.n;
        const T inv = w.l[u] > 0 ? T(1) / w.l[u] : T(0);
        for (int64_t c = 0; c < dim_v; ++c) orow[c] = w.o[u * w.dv_pad + c] * inv;
        if (lseb) lseb[qi[u] * lse_n] = w.l[u] > 0 ? w.m[u] + std::log(w.l[u]) : T(-INFINITY);
    }
}

template <typename T>
void forward(const T* q, const T* k, const T* v, T* out, T* lse, int64_t batch, int64_t heads, int64_t dim,
             int64_t dim_v, Strides qs, Strides ks, Strides vs, Strides os, Strides ls, const Tiles& tiles,
             T scale, int threads) {
    int64_t max_q = 0;
    for (int64_t t = 0; t < tiles.count; ++t) max_q = std::max(max_q, tiles.q_ptr[t + 1] - tiles.q_ptr[t]);
    const int64_t work = batch * heads * tiles.count;
#pragma omp parallel num_threads(threads)
    {
        Workspace<T> w(max_q, dim, dim_v);
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < work; ++item) {
            const int64_t bh = item / tiles.count, t = item % tiles.count;
            const int64_t b = bh / heads, h = bh % heads;
            run_tile<T>(q + b * qs.b + h * qs.h, k + b * ks.b + h * ks.h, v + b * vs.b + h * vs.h,
                        out + b * os.b + h * os.h, lse ? lse + b * ls.b + h * ls.h : nullptr, dim, dim_v, qs, ks, vs,
                        os, ls.n, tiles, t, scale, w);
        }
    }
}

}  // namespace

#define VISATTN_TILE_ENTRY(T, SUFFIX)                                                                              \
    extern "C" void visattn_tile_forward_##SUFFIX(                                                                 \
        const T* q, const T* k, const T* v, T* out, T* lse, int64_t batch, int64_t heads, int64_t dim,           \
        int64_t dim_v, const int64_t* qs, const int64_t* ks, const int64_t* vs, const int64_t* os,               \
        const int64_t* ls, int64_t count, const int64_t* q_ptr, const int64_t* q_idx, const int64_t* seg_ptr,    \
        const int64_t* key_ptr, const int64_t* k_idx, const int64_t* mask_off, const uint8_t* masks, double scale, \
        int threads) {                                                                                             \
        const Tiles tiles{count, q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks};                         \
        forward<T>(q, k, v, out, lse, batch, heads, dim, dim_v, {qs[0], qs[1], qs[2]}, {ks[0], ks[1], ks[2]},    \
                   {vs[0], vs[1], vs[2]}, {os[0], os[1], os[2]}, {ls[0], ls[1], ls[2]}, tiles, T(scale), threads); \
    }

VISATTN_TILE_ENTRY(float, f32)
VISATTN_TILE_ENTRY(double, f64)
