// Fused tile attention: softmax attention over lists of (query tile, key segments), each segment optionally under
// a bool mask, with GEMM-style register blocking: the forward engine of the neighborhood, window, grid, halo, axial,
// strip, sliding-window and block-sparse (radial, PARO) fast paths.
//
// Everything per tile is kept query-major across vector lanes ("transposed"): Qt [d x rows], the scores St
// [keys x rows] and the output accumulator Ot [dv x rows], rows padded to the vector width. Per chunk of 64 keys
// (their K and V rows read in place, neither copied, transposed nor padded):
//   St[j, :] = sum_c K[j, c] * Qt[c, :]      (8 keys x 2-3 vectors of queries per register block, each K element
//                                              broadcast), masked by one byte-vector compare per key and folded into
//                                              a running per-lane maximum as the block is stored;
// then the online softmax (Flash Attention's running max m and sum l) runs down the keys with one query per lane,
// free of horizontal reductions, and
//   Ot[c, :] = Ot[c, :] exp(m_old - m_new) + sum_j V[j, c] * P[j, :]
//                                            (8 value dims x 2-3 vectors of queries per register block; the first
//                                             chunk starts from zero).
// Finally out = Ot^T / l and lse = m + log l; a query that saw no key gets 0 and lse = -inf. Up to kTailRows
// queries past a multiple of the vector width run one at a time (tail_rows). Scores never leave per-thread scratch;
// the next tile's rows are prefetched while this one computes. NaN and inf follow the reference (docs/kernels.md,
// "Numerics"): a NaN score makes its P, hence l, the row and its lse NaN; a +inf one gives inf - inf = NaN.
//
// Built on demand by visattn/ops/native.py and called through ctypes (visattn/ops/tile_kernel.py).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "tile_common.h"

namespace {

using namespace visattn;
using namespace visattn::tile;

constexpr int64_t kAheadRows = 8;

// St[j0 + r, u : u + V lanes] = sum_c K[j0 + r, c] Qt[c, u : ...] for r < R keys, -inf where the key-major mask
// (if any; rows ``stride`` bytes apart) is 0, and the running maximum top[u : ...] of each lane.
template <typename T, int R, int V>
void scores_block(Workspace<T>& w, int64_t j0, int64_t u, const uint8_t* mask, int64_t stride) {
    using S = Simd<T>;
    const int64_t dim = w.d;
    w.prefetch_ahead(kAheadRows);
    typename S::vec acc[R][V] = {};
    const T* k[R];
    for (int r = 0; r < R; ++r) k[r] = w.krow[j0 + r];
    for (int64_t c = 0; c < dim; ++c) {
        typename S::vec qv[V];
        for (int b = 0; b < V; ++b) qv[b] = S::load(&w.qt[c * w.rows + u + b * S::lanes]);
        for (int r = 0; r < R; ++r) {
            const T kv = k[r][c];
            for (int b = 0; b < V; ++b) acc[r][b] += kv * qv[b];
        }
    }
    typename S::vec top[V];
    for (int b = 0; b < V; ++b) top[b] = S::load(&w.top[u + b * S::lanes]);
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < V; ++b) {
            if (mask)
                acc[r][b] = S::select(S::allowed(mask + (j0 + r) * stride + u + b * S::lanes), acc[r][b],
                                      S::splat(T(-INFINITY)));
            top[b] = S::max(top[b], acc[r][b]);
            S::store(&w.st[(j0 + r) * w.rows + u + b * S::lanes], acc[r][b]);
        }
    for (int b = 0; b < V; ++b) S::store(&w.top[u + b * S::lanes], top[b]);
}

template <typename T, int V>
void scores_rows(Workspace<T>& w, int64_t keys, int64_t u, const uint8_t* mask, int64_t stride) {
    int64_t j = 0;
    for (; j + kBlock <= keys; j += kBlock) scores_block<T, kBlock, V>(w, j, u, mask, stride);
    for (; j + 2 <= keys; j += 2) scores_block<T, 2, V>(w, j, u, mask, stride);
    if (j < keys) scores_block<T, 1, V>(w, j, u, mask, stride);
}

// St[:keys, :rows] = K[:keys] Qt[:, :rows] under the chunk's mask, and top = max(m, max_j St) per lane.
template <typename T>
void scores(Workspace<T>& w, int64_t keys, int64_t rows, const uint8_t* mask, int64_t stride) {
    std::copy_n(w.m.begin(), rows, w.top.begin());
    row_blocks<T>(rows, [&](auto v, int64_t u) { scores_rows<T, decltype(v)::value>(w, keys, u, mask, stride); });
}

// Ot[c0 + r, u : ...] = alpha[u : ...] Ot[c0 + r, u : ...] + sum_j V[j, c0 + r] P[j, u : ...] for r < R value dims
// (the first chunk starts from zero).
template <typename T, int R, int V>
void accumulate_block(Workspace<T>& w, int64_t keys, int64_t c0, int64_t u) {
    using S = Simd<T>;
    w.prefetch_ahead(kAheadRows);
    typename S::vec acc[R][V] = {};
    if (!w.fresh)
        for (int b = 0; b < V; ++b) {
            const typename S::vec alpha = S::load(&w.alpha[u + b * S::lanes]);
            for (int r = 0; r < R; ++r) acc[r][b] = S::load(&w.ot[(c0 + r) * w.rows + u + b * S::lanes]) * alpha;
        }
    for (int64_t j = 0; j < keys; ++j) {
        typename S::vec p[V];
        for (int b = 0; b < V; ++b) p[b] = S::load(&w.st[j * w.rows + u + b * S::lanes]);
        const T* vj = w.vrow[j] + c0;
        for (int r = 0; r < R; ++r) {
            const T vv = vj[r];
            for (int b = 0; b < V; ++b) acc[r][b] += vv * p[b];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < V; ++b) S::store(&w.ot[(c0 + r) * w.rows + u + b * S::lanes], acc[r][b]);
}

template <typename T, int V>
void accumulate_rows(Workspace<T>& w, int64_t keys, int64_t u) {
    int64_t c = 0;
    for (; c + kBlock <= w.dv; c += kBlock) accumulate_block<T, kBlock, V>(w, keys, c, u);
    for (; c < w.dv; ++c) accumulate_block<T, 1, V>(w, keys, c, u);
}

// Ot[:, :rows] = alpha Ot[:, :rows] + V[:keys]^T P[:keys, :rows].
template <typename T>
void accumulate(Workspace<T>& w, int64_t keys, int64_t rows) {
    row_blocks<T>(rows, [&](auto v, int64_t u) { accumulate_rows<T, decltype(v)::value>(w, keys, u); });
    w.fresh = false;
}

// Folds a chunk of scores into the online softmax, one query per lane: m' = top = max(m, max_j S), P = exp(S - m')
// (0 where S = -inf), alpha = exp(m - m') (applied to Ot by ``accumulate``), l' = l alpha + sum_j P. Lanes still
// without a key keep m = -inf.
template <typename T>
void fold(Workspace<T>& w, int64_t keys, int64_t rows) {
    using S = Simd<T>;
    const typename S::vec none = S::splat(T(-INFINITY)), zero = S::splat(T(0));
    for (int64_t u = 0; u < rows; u += S::lanes) {
        const typename S::vec old_m = S::load(&w.m[u]), top = S::load(&w.top[u]);
        const typename S::vec shift = S::select(top == none, zero, top);
        typename S::vec total = zero;
        for (int64_t j = 0; j < keys; ++j) {
            T* s = &w.st[j * w.rows + u];
            const typename S::vec p = exp_vec<T>(S::load(s) - shift);
            S::store(s, p);
            total += p;
        }
        const typename S::vec alpha = exp_vec<T>(old_m - shift);
        S::store(&w.l[u], S::load(&w.l[u]) * alpha + total);
        S::store(&w.m[u], top);
        S::store(&w.alpha[u], alpha);
    }
}

// Query-major softmax attention of the tile's last ``tail`` rows over a chunk of keys, for tiles that would otherwise
// pad a vector of queries for them: per row, S_j = q . k_j (a vector of keys at a time, reduced by ``row_sums``),
// masked, then the same online softmax as ``fold`` and o += sum_j P_j v_j. Row i keeps m and l at index
// ``first + i`` of the workspace.
template <typename T>
void tail_rows(Workspace<T>& w, int64_t first, int64_t tail, int64_t keys, const uint8_t* mask, int64_t stride) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    T* s = w.s_tail.data();
    for (int64_t i = 0; i < tail; ++i) {
        const T* q = &w.q_tail[i * w.d];
        for (int64_t j0 = 0; j0 < keys; j0 += L) {
            if (w.d % L == 0) {
                typename S::vec prod[L];
                for (int64_t r = 0; r < L; ++r) {
                    prod[r] = S::splat(0);
                    const T* k = w.krow[j0 + r];
                    if (j0 + r < keys)
                        for (int64_t c = 0; c < w.d; c += L) prod[r] += S::load(q + c) * S::load(k + c);
                }
                S::store(s + j0, row_sums<T>(prod));
            } else {
                for (int64_t j = j0; j < std::min(keys, j0 + L); ++j) {
                    T dot = 0;
                    for (int64_t c = 0; c < w.d; ++c) dot += q[c] * w.krow[j][c];
                    s[j] = dot;
                }
            }
        }
        const int64_t width = round_up(keys, L);
        std::fill(s + keys, s + width, T(-INFINITY));
        if (mask)
            for (int64_t j = 0; j < keys; ++j)
                if (!mask[j * stride + first + i]) s[j] = T(-INFINITY);
        T& m = w.m[first + i];
        typename S::vec tops = S::splat(m);
        for (int64_t j0 = 0; j0 < width; j0 += L) tops = S::max(tops, S::load(s + j0));
        T top = tops[0];
        for (int64_t r = 1; r < L; ++r) top = std::max(top, tops[r]);
        const T shift = top == T(-INFINITY) ? T(0) : top;
        typename S::vec total = S::splat(0);
        for (int64_t j0 = 0; j0 < width; j0 += L) {
            const typename S::vec p = exp_vec<T>(S::load(s + j0) - shift);
            S::store(s + j0, p);
            total += p;
        }
        const T alpha = exp_vec<T>(S::splat(m - shift))[0];
        T sum = 0;
        for (int64_t r = 0; r < L; ++r) sum += total[r];
        w.l[first + i] = w.l[first + i] * alpha + sum;
        m = top;
        T* o = &w.o_tail[i * w.dv];
        int64_t c = 0;
        for (; c + 2 * L <= w.dv; c += 2 * L) {
            // Even and odd keys in separate accumulators: four independent FMA chains.
            typename S::vec even0 = S::load(o + c) * alpha, even1 = S::load(o + c + L) * alpha, odd0 = {}, odd1 = {};
            int64_t j = 0;
            for (; j + 2 <= keys; j += 2) {
                even0 += s[j] * S::load(w.vrow[j] + c);
                even1 += s[j] * S::load(w.vrow[j] + c + L);
                odd0 += s[j + 1] * S::load(w.vrow[j + 1] + c);
                odd1 += s[j + 1] * S::load(w.vrow[j + 1] + c + L);
            }
            if (j < keys) {
                even0 += s[j] * S::load(w.vrow[j] + c);
                even1 += s[j] * S::load(w.vrow[j] + c + L);
            }
            S::store(o + c, even0 + odd0);
            S::store(o + c + L, even1 + odd1);
        }
        for (; c < w.dv; ++c) {
            T acc = o[c] * alpha;
            for (int64_t j = 0; j < keys; ++j) acc += s[j] * w.vrow[j][c];
            o[c] = acc;
        }
    }
}

// out[tile queries] = (Ot / l)^T for the first nq and from the tail rows after them; lse = m + log l (0 and -inf
// for queries that saw no key, or whose scores were all -inf: l = 0; NaN rows keep their NaN l, out and lse).
template <typename T>
void store_outputs(Workspace<T>& w, T* ob, T* lseb, const int64_t* qi, int64_t nq, int64_t tail, int64_t on,
                   int64_t lse_n, int64_t dim_v) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    for (int64_t u0 = 0; u0 < nq; u0 += L) {
        const typename S::vec l = S::load(&w.l[u0]);
        const typename S::vec inv = S::select(l == S::splat(0), S::splat(0), S::splat(1) / l);
        if (dim_v % L == 0) {
            typename S::vec block[L];
            for (int64_t c0 = 0; c0 < dim_v; c0 += L) {
                for (int64_t r = 0; r < L; ++r) block[r] = S::load(&w.ot[(c0 + r) * w.rows + u0]) * inv;
                transpose_block<T>(block);
                for (int64_t r = 0; r < L && u0 + r < nq; ++r) S::store(ob + qi[u0 + r] * on + c0, block[r]);
            }
        } else {
            for (int64_t r = 0; r < L && u0 + r < nq; ++r)
                for (int64_t c = 0; c < dim_v; ++c) ob[qi[u0 + r] * on + c] = w.ot[c * w.rows + u0 + r] * inv[r];
        }
        if (lseb)
            for (int64_t r = 0; r < L && u0 + r < nq; ++r)
                lseb[qi[u0 + r] * lse_n] = l[r] == 0 ? T(-INFINITY) : w.m[u0 + r] + std::log(l[r]);
    }
    for (int64_t i = 0; i < tail; ++i) {
        const T l = w.l[nq + i], inv = l == 0 ? T(0) : T(1) / l;
        for (int64_t c = 0; c < dim_v; ++c) ob[qi[nq + i] * on + c] = w.o_tail[i * dim_v + c] * inv;
        if (lseb) lseb[qi[nq + i] * lse_n] = l == 0 ? T(-INFINITY) : w.m[nq + i] + std::log(l);
    }
}

template <typename T>
void run_tile(const T* qb, const T* kb, const T* vb, T* ob, T* lseb, int64_t dim, int64_t dim_v, Strides qs,
              Strides ks, Strides vs, Strides os, int64_t lse_n, const Tiles& tiles, int64_t t, T scale,
              Workspace<T>& w) {
    const int64_t q0 = tiles.q_ptr[t], nq = tiles.q_ptr[t + 1] - q0, mask_stride = round_up(nq, kMaskAlign);
    const int64_t tail = nq % Simd<T>::lanes <= kTailRows ? nq % Simd<T>::lanes : 0;
    const int64_t lanes = nq - tail, rows = round_up(lanes, Simd<T>::lanes);
    const int64_t* qi = tiles.q_idx + q0;
    load_queries(w, w.qt.data(), qb, qi, lanes, tail, qs.n, dim, scale);
    w.fresh = true;
    std::fill(w.o_tail.begin(), w.o_tail.end(), T(0));
    std::fill(w.m.begin(), w.m.end(), T(-INFINITY));
    std::fill(w.l.begin(), w.l.end(), T(0));
    for (int64_t seg = tiles.seg_ptr[t]; seg < tiles.seg_ptr[t + 1]; ++seg) {
        const int64_t k0 = tiles.key_ptr[seg], nk = tiles.key_ptr[seg + 1] - k0;
        const uint8_t* mask = tiles.mask_off[seg] >= 0 ? tiles.masks + tiles.mask_off[seg] : nullptr;
        for (int64_t j0 = 0; j0 < nk; j0 += kChunk) {
            const int64_t kc = std::min(kChunk, nk - j0);
            const uint8_t* chunk_mask = mask ? mask + j0 * mask_stride : nullptr;
            key_rows(w, kb, vb, tiles.k_idx + k0 + j0, kc, ks.n, vs.n);
            scores(w, kc, rows, chunk_mask, mask_stride);
            fold(w, kc, rows);
            accumulate(w, kc, rows);
            if (tail) tail_rows(w, lanes, tail, kc, chunk_mask, mask_stride);
        }
    }
    if (w.fresh) std::fill(w.ot.begin(), w.ot.begin() + dim_v * w.rows, T(0));
    store_outputs(w, ob, lseb, qi, lanes, tail, os.n, lse_n, dim_v);
}

// Points the prefetcher at the next tile (first issuing what is left for the current one): tiles gather rows from
// all over the token grid, which the hardware prefetchers do not follow.
template <typename T>
void prefetch_tile(Workspace<T>& w, const T* qb, const T* kb, const T* vb, T* ob, Strides qs, Strides ks, Strides vs,
                   Strides os, const Tiles& tiles, int64_t t) {
    w.prefetch_ahead(w.ahead.nq + w.ahead.nk);
    const int64_t q0 = tiles.q_ptr[t], k0 = tiles.key_ptr[tiles.seg_ptr[t]];
    w.ahead = {qb, kb, vb, ob, tiles.q_idx + q0, tiles.k_idx + k0, tiles.q_ptr[t + 1] - q0,
               tiles.key_ptr[tiles.seg_ptr[t + 1]] - k0, 0, qs, ks, vs, os};
}

// Work items are (batch-head, tile) pairs, handed out in runs of consecutive items (neighbouring tiles, whose rows
// the hardware prefetchers partly follow): up to kMaxRun items, and at least kRunsPerThread runs per thread for
// balance. A thread claims its next run when it starts one, so that it knows every next tile, the first of the next
// run included, and prefetches it.
constexpr int64_t kMaxRun = 32;
constexpr int64_t kRunsPerThread = 8;

template <typename T>
void forward(const T* q, const T* k, const T* v, T* out, T* lse, int64_t batch, int64_t heads, int64_t dim,
             int64_t dim_v, Strides qs, Strides ks, Strides vs, Strides os, Strides ls, const Tiles& tiles,
             T scale, int threads) {
    const int64_t work = batch * heads * tiles.count;
    const int64_t run_items = std::clamp<int64_t>(work / (kRunsPerThread * threads), 1, kMaxRun);
    const int64_t runs = (work + run_items - 1) / run_items;
    const auto at = [&](auto* tensor, Strides st, int64_t item) { return item_slice(tensor, st, item, tiles, heads); };
    std::atomic<int64_t> claimed{0};
#pragma omp parallel num_threads(threads)
    {
        Workspace<T> w(tiles.max_queries(), dim, dim_v);
        for (int64_t run = claimed.fetch_add(1); run < runs;) {
            const int64_t following = claimed.fetch_add(1), end = std::min(work, (run + 1) * run_items);
            for (int64_t item = run * run_items; item < end; ++item) {
                const int64_t next = item + 1 < end ? item + 1 : following * run_items;
                if (next < work)
                    prefetch_tile<T>(w, at(q, qs, next), at(k, ks, next), at(v, vs, next), at(out, os, next), qs, ks,
                                     vs, os, tiles, next % tiles.count);
                run_tile<T>(at(q, qs, item), at(k, ks, item), at(v, vs, item), at(out, os, item),
                            lse ? at(lse, ls, item) : nullptr, dim, dim_v, qs, ks, vs, os, ls.n, tiles,
                            item % tiles.count, scale, w);
            }
            run = following;
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
