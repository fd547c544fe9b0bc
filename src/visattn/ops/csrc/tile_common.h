// Shared by the fused tile kernel's forward (tile_attention.cpp) and backward (tile_attention_backward.cpp): the
// tile list, the per-thread workspace with its prefetch cursor, register-block dispatch over query vectors, key rows
// read in place and the transposed load of query rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.h"

namespace visattn::tile {

constexpr int64_t kChunk = 64;
// Keys (scores) or value dims (output) per register block: with 32 vector registers (AVX-512, AArch64) 8 keys x 2-3
// vectors of accumulators, 2-3 of queries and a broadcast; with the 16 of AVX2 and SSE 6 x 2 (+ 3), as a classic
// 6 x 16 AVX2 GEMM kernel. Measured at AVX2 (2-D neighborhood k=7 and 8x8 windows at 128x128, one thread): 6 took
// 23-30% less time than 4 and 35% less than 8; the generic (SSE) build 6 about as 4, 8 10-20% slower; AVX-512 keeps 8.
#ifndef VISATTN_TILE_BLOCK
#define VISATTN_TILE_BLOCK (VISATTN_VECTOR_REGISTERS >= 32 ? 8 : 6)
#endif
constexpr int kBlock = VISATTN_TILE_BLOCK;
// A tile whose query count exceeds a multiple of the vector width by at most this many rows runs those rows one at a
// time (tail_rows) instead of in a vector of mostly padding: a 7x7 window is 48 rows in lanes and one alone.
constexpr int64_t kTailRows = 3;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Tiles {
    int64_t count;
    const int64_t *q_ptr, *q_idx, *seg_ptr, *key_ptr, *k_idx, *mask_off;
    const uint8_t* masks;

    int64_t max_queries() const {
        int64_t most = 0;
        for (int64_t t = 0; t < count; ++t) most = std::max(most, q_ptr[t + 1] - q_ptr[t]);
        return most;
    }
};

// The (batch, head) slice of ``tensor`` that work item ``item`` (a batch-head times tile count plus a tile) reads or
// writes.
template <typename P>
P* item_slice(P* tensor, Strides st, int64_t item, const Tiles& tiles, int64_t heads) {
    const int64_t bh = item / tiles.count;
    return tensor + (bh / heads) * st.b + (bh % heads) * st.h;
}

template <typename T>
struct Workspace {
    int64_t rows;  // query rows per tile, padded to the vector width: the stride of every transposed array
    int64_t d, dv;
    std::vector<T> qt, st, ot, m, l, top, alpha;
    bool fresh = true;  // Ot holds nothing yet: the next accumulate starts from zero instead of rescaling
    const T* krow[kChunk];  // the chunk's key and value rows, read in place
    const T* vrow[kChunk];
    std::vector<T> q_tail, o_tail, s_tail;  // tail rows, query-major (see tail_rows)
    Workspace(int64_t max_q, int64_t d, int64_t dv)
        : rows(round_up(std::max<int64_t>(max_q, 1), Simd<T>::lanes)),
          d(d),
          dv(dv),
          qt(d * rows),
          st(kChunk * rows),
          ot(dv * rows),
          m(rows),
          l(rows),
          top(rows),
          alpha(rows),
          q_tail(kTailRows * d),
          o_tail(kTailRows * dv),
          s_tail(kChunk) {}

    // The next tile's rows, prefetched into L2 a few at a time between register blocks of this one, so that the
    // requests overlap with compute instead of queueing up at once: rows [0, nq) are its query (and output) rows,
    // rows [nq, nq + nk) its key (and value) rows.
    struct Ahead {
        const T *qb = nullptr, *kb = nullptr, *vb = nullptr, *ob = nullptr;
        const int64_t *q_idx = nullptr, *k_idx = nullptr;
        int64_t nq = 0, nk = 0, next = 0;
        Strides qs{}, ks{}, vs{}, os{};
    } ahead;
    void prefetch_ahead(int64_t count) {
        constexpr int64_t line = 64 / sizeof(T);
        const auto lines = [](const T* row, int64_t width, int rw) {
            for (int64_t c = 0; c < width; c += line)
                rw ? __builtin_prefetch(row + c, 1, 2) : __builtin_prefetch(row + c, 0, 2);
        };
        Ahead& a = ahead;
        for (const int64_t end = std::min(a.nq + a.nk, a.next + count); a.next < end; ++a.next) {
            if (a.next < a.nq) {
                lines(a.qb + a.q_idx[a.next] * a.qs.n, d, 0);
                lines(a.ob + a.q_idx[a.next] * a.os.n, dv, 1);
            } else {
                lines(a.kb + a.k_idx[a.next - a.nq] * a.ks.n, d, 0);
                lines(a.vb + a.k_idx[a.next - a.nq] * a.vs.n, dv, 0);
            }
        }
    }
};

// Calls body(std::integral_constant<int, V>, u) over the query vectors of ``rows`` lanes in register blocks of V = 3
// vectors (once, where their count is odd and at least 3), then 2, then 1: 48 rows (a 7x7 window's) are one block.
template <typename T, typename Body>
void row_blocks(int64_t rows, Body&& body) {
    constexpr int64_t L = Simd<T>::lanes;
    int64_t n = rows / L, u = 0;
    if (n % 2 == 1 && n >= 3) {
        body(std::integral_constant<int, 3>{}, u);
        u += 3 * L;
        n -= 3;
    }
    for (; n >= 2; n -= 2, u += 2 * L) body(std::integral_constant<int, 2>{}, u);
    if (n == 1) body(std::integral_constant<int, 1>{}, u);
}

// Points the workspace at the chunk's key and value rows. They are read in place: copying them to scratch, against
// L1 set conflicts where rows lie a power of two apart (grid cells, columns), measured no faster for such tiles and
// 10-20% slower for windows.
template <typename T>
void key_rows(Workspace<T>& w, const T* kb, const T* vb, const int64_t* idx, int64_t keys, int64_t kn, int64_t vn) {
    for (int64_t j = 0; j < keys; ++j) {
        w.krow[j] = kb + idx[j] * kn;
        w.vrow[j] = vb + idx[j] * vn;
    }
}

// dst[:dim, :rows] = scale * Q[tile queries]^T for the first nq (zero past them), and the ``tail`` rows after them
// query-major (Qt; the backward's dOt too).
template <typename T>
void load_queries(Workspace<T>& w, T* dst, const T* qb, const int64_t* qi, int64_t nq, int64_t tail, int64_t qn,
                  int64_t dim, T scale) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    for (int64_t i = 0; i < tail; ++i)
        for (int64_t c = 0; c < dim; ++c) w.q_tail[i * dim + c] = qb[qi[nq + i] * qn + c] * scale;
    if (dim % L != 0) {
        std::fill(dst, dst + dim * w.rows, T(0));
        for (int64_t u = 0; u < nq; ++u)
            for (int64_t c = 0; c < dim; ++c) dst[c * w.rows + u] = qb[qi[u] * qn + c] * scale;
        return;
    }
    typename S::vec block[L];
    for (int64_t u0 = 0; u0 < nq; u0 += L)
        for (int64_t c0 = 0; c0 < dim; c0 += L) {
            for (int64_t r = 0; r < L; ++r) block[r] = u0 + r < nq ? S::load(qb + qi[u0 + r] * qn + c0) : S::splat(0);
            transpose_block<T>(block);
            for (int64_t r = 0; r < L; ++r) S::store(&dst[(c0 + r) * w.rows + u0], block[r] * scale);
        }
}

}  // namespace visattn::tile
