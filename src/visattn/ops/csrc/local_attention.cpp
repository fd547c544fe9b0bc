// Exact local softmax attention for masks whose key set is, along every axis, an arithmetic progression
// of coordinates (neighborhood, window, grid, halo, axial, strip, sliding window), plus P prefix tokens.
//
// For every spatial query i with per-axis progressions (start_a, count_a, step_a):
//   out_i = sum_{j in M(i)} softmax_j(scale * q_i . k_j) v_j,   lse_i = log sum_{j in M(i)} exp(scale * q_i . k_j)
// computing exactly the |M(i)| attended pairs: no tile padding, no mask tensor. The backward pass
// (Faster Neighborhood Attention's recomputation scheme) runs query-major for dQ and key-major for dK, dV
// over the transposed progressions, so that no two threads write the same row (and the same bits on every run).
// NaN and inf follow the reference (docs/kernels.md, "Numerics"); a row whose scores are all -inf is a row without
// keys (0, lse -inf).
//
// Built on demand by visattn/ops/local_kernel.py and called through ctypes; tensors arrive as raw pointers
// with (batch, head, token) element strides and a contiguous last dimension.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace {

using namespace visattn;

constexpr int kMaxDims = 4;

struct Layout {
    int64_t ndim;
    int64_t shape[kMaxDims];
    const int64_t* start[kMaxDims];
    const int64_t* count[kMaxDims];
    const int64_t* step[kMaxDims];
    int64_t prefix;
    int64_t spatial;  // prod(shape)
};

Layout make_layout(int64_t ndim, const int64_t* shape, const int64_t* start, const int64_t* count,
                   const int64_t* step, int64_t prefix) {
    Layout layout{};
    layout.ndim = ndim;
    layout.prefix = prefix;
    layout.spatial = 1;
    int64_t offset = 0;
    for (int64_t a = 0; a < ndim; ++a) {
        layout.shape[a] = shape[a];
        layout.start[a] = start + offset;
        layout.count[a] = count + offset;
        layout.step[a] = step + offset;
        offset += shape[a];
        layout.spatial *= shape[a];
    }
    return layout;
}

int64_t max_keys(const Layout& layout) {
    int64_t total = 1;
    for (int64_t a = 0; a < layout.ndim; ++a) {
        int64_t most = 0;
        for (int64_t x = 0; x < layout.shape[a]; ++x) most = std::max(most, layout.count[a][x]);
        total *= most;
    }
    return total + layout.prefix;
}

// Token indices (prefix included) that spatial token ``index`` pairs with; returns how many.
int64_t pair_list(const Layout& layout, int64_t index, int64_t* out) {
    int64_t coord[kMaxDims];
    int64_t rest = index;
    for (int64_t a = layout.ndim - 1; a >= 0; --a) {
        coord[a] = rest % layout.shape[a];
        rest /= layout.shape[a];
    }
    int64_t n = 0;
    for (int64_t j = 0; j < layout.prefix; ++j) out[n++] = j;
    int64_t first = n;
    out[n++] = 0;
    int64_t stride = 1;
    for (int64_t a = layout.ndim - 1; a >= 0; --a) {
        const int64_t c = coord[a];
        const int64_t s = layout.start[a][c], cnt = layout.count[a][c], st = layout.step[a][c];
        const int64_t have = n - first;
        if (cnt == 0) return layout.prefix;
        // out[first:] holds partial offsets over the later axes; extend by this axis, keeping row-major order.
        for (int64_t i = cnt - 1; i >= 0; --i) {
            const int64_t add = (s + i * st) * stride;
            for (int64_t r = 0; r < have; ++r) out[first + i * have + r] = out[first + r] + add;
        }
        n = first + have * cnt;
        stride *= layout.shape[a];
    }
    for (int64_t j = first; j < n; ++j) out[j] += layout.prefix;
    return n;
}

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t dim) {
    using S = Simd<T>;
    typename S::vec acc = {};
    int64_t d = 0;
    for (; d + S::lanes <= dim; d += S::lanes) acc += S::load(a + d) * S::load(b + d);
    T total = hsum<T>(acc);
    for (; d < dim; ++d) total += a[d] * b[d];
    return total;
}

// out[j] = x . base[rows[j] * stride] for j < n. With C > 0 the dim is C * lanes and x sits in C registers; rows go
// a vector of them at a time through row_sums.
template <typename T, int C>
void gathered_dots(const T* x, const T* base, const int64_t* rows, int64_t n, int64_t stride, int64_t dim,
                   T* out) {
    using S = Simd<T>;
    int64_t j = 0;
    if constexpr (C > 0) {
        typename S::vec xv[C];
        for (int c = 0; c < C; ++c) xv[c] = S::load(x + c * S::lanes);
        for (; j + S::lanes <= n; j += S::lanes) {
            typename S::vec prod[S::lanes];
            for (int l = 0; l < S::lanes; ++l) {
                const T* r = base + rows[j + l] * stride;
                prod[l] = xv[0] * S::load(r);
                for (int c = 1; c < C; ++c) prod[l] += xv[c] * S::load(r + c * S::lanes);
            }
            S::store(out + j, row_sums<T>(prod));
        }
        for (; j < n; ++j) {
            const T* r = base + rows[j] * stride;
            typename S::vec prod = xv[0] * S::load(r);
            for (int c = 1; c < C; ++c) prod += xv[c] * S::load(r + c * S::lanes);
            out[j] = hsum<T>(prod);
        }
    } else {
        for (; j < n; ++j) out[j] = dot(x, base + rows[j] * stride, dim);
    }
}

// out = scale * sum_j w[j] base[rows[j] * stride] (C registers of accumulators when C > 0, ``acc`` otherwise).
template <typename T, int C>
void gathered_sum(const T* w, const T* base, const int64_t* rows, int64_t n, int64_t stride, int64_t dim, T scale,
                  T* acc, T* out) {
    using S = Simd<T>;
    if constexpr (C > 0) {
        // Four independent accumulator sets, so that consecutive keys do not wait on each other's FMA latency.
        constexpr int U = 4;
        typename S::vec sum[U][C] = {};
        int64_t j = 0;
        for (; j + U <= n; j += U)
            for (int u = 0; u < U; ++u) {
                const T* r = base + rows[j + u] * stride;
                for (int c = 0; c < C; ++c) sum[u][c] += w[j + u] * S::load(r + c * S::lanes);
            }
        for (; j < n; ++j) {
            const T* r = base + rows[j] * stride;
            for (int c = 0; c < C; ++c) sum[0][c] += w[j] * S::load(r + c * S::lanes);
        }
        for (int c = 0; c < C; ++c)
            S::store(out + c * S::lanes, ((sum[0][c] + sum[1][c]) + (sum[2][c] + sum[3][c])) * scale);
    } else {
        std::fill(acc, acc + dim, T(0));
        for (int64_t j = 0; j < n; ++j) {
            const T* r = base + rows[j] * stride;
            int64_t d = 0;
            for (; d + S::lanes <= dim; d += S::lanes)
                S::store(acc + d, S::load(acc + d) + w[j] * S::load(r + d));
            for (; d < dim; ++d) acc[d] += w[j] * r[d];
        }
        for (int64_t d = 0; d < dim; ++d) out[d] = acc[d] * scale;
    }
}

struct Problem {
    int64_t batch, heads, dim, dim_v;
    Strides qs, ks, vs;
};

// Per-thread scratch: a pair list and three score-sized arrays, plus a head-dim accumulator.
template <typename T>
struct Scratch {
    std::vector<int64_t> pairs, rows;
    std::vector<T> a, b, c, acc;
    Scratch(int64_t width, int64_t dim) : pairs(width), rows(width), a(width), b(width), c(width), acc(dim) {}
};

// Runs body(row, scratch) for row < rows on ``threads`` OpenMP threads, one Scratch per thread.
template <typename T, typename Body>
void parallel_rows(int64_t rows, int64_t width, int64_t dim, int threads, Body&& body) {
#pragma omp parallel num_threads(threads)
    {
        Scratch<T> sc(width, dim);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) body(row, sc);
    }
}

// One query row over its ``n`` keys (token indices ``keys``): out = softmax(scale q . k_j) v_j; returns the
// log-sum-exp (-inf and a zero row when n == 0).
template <typename T, int C>
T softmax_row(const T* qi, const T* kb, const T* vb, const int64_t* keys, int64_t n, const Problem& pr, T scale,
              T* score, T* acc, T* oi) {
    if (n == 0) {
        std::fill(oi, oi + pr.dim_v, T(0));
        return -INFINITY;
    }
    gathered_dots<T, C>(qi, kb, keys, n, pr.ks.n, pr.dim, score);
    using S = Simd<T>;
    typename S::vec tops = S::splat(T(-INFINITY));
    int64_t j = 0;
    for (; j + S::lanes <= n; j += S::lanes) {
        const typename S::vec x = S::load(score + j) * scale;
        S::store(score + j, x);
        tops = S::max(tops, x);
    }
    T top = -INFINITY;
    for (int64_t l = 0; l < S::lanes; ++l) top = std::max(top, tops[l]);
    for (; j < n; ++j) {
        score[j] *= scale;
        top = std::max(top, score[j]);
    }
    // A NaN score need not survive the max (Simd::max): its exp is NaN, and so are total, the row and its lse.
    const T shift = top == T(-INFINITY) ? T(0) : top;
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < n; ++j) {
        score[j] = exp_of(score[j] - shift);
        total += score[j];
    }
    if (total == 0) {  // every score -inf (a -inf in q): a row without keys, as in the reference
        std::fill(oi, oi + pr.dim_v, T(0));
        return -INFINITY;
    }
    gathered_sum<T, C>(score, vb, keys, n, pr.vs.n, pr.dim_v, T(1) / total, acc, oi);
    return top + std::log(total);
}

template <typename T, int C>
void forward(const T* q, const T* k, const T* v, T* out, T* lse, const Problem& pr, const Layout& layout, T scale,
             int threads) {
    parallel_rows<T>(pr.batch * pr.heads * layout.spatial, max_keys(layout), std::max(pr.dim, pr.dim_v), threads,
                     [&](int64_t row, Scratch<T>& sc) {
                         const int64_t bh = row / layout.spatial, i = row % layout.spatial;
                         const int64_t b = bh / pr.heads, h = bh % pr.heads;
                         const int64_t n = pair_list(layout, i, sc.pairs.data());
                         lse[row] = softmax_row<T, C>(
                             q + b * pr.qs.b + h * pr.qs.h + (layout.prefix + i) * pr.qs.n,
                             k + b * pr.ks.b + h * pr.ks.h, v + b * pr.vs.b + h * pr.vs.h, sc.pairs.data(), n, pr,
                             scale, sc.a.data(), sc.acc.data(), out + row * pr.dim_v);
                     });
}

// Every query row ``i`` of ``q`` (``rows`` per batch-head) over its own ``width`` keys ``index[bh, i, :]``
// (token indices of k; negative entries end the list early): Sparsifiner's top-k execution.
template <typename T, int C>
void index_forward(const T* q, const T* k, const T* v, T* out, const int64_t* index, int64_t rows, int64_t width,
                   const Problem& pr, T scale, int threads) {
    parallel_rows<T>(pr.batch * pr.heads * rows, width, std::max(pr.dim, pr.dim_v), threads,
                     [&](int64_t row, Scratch<T>& sc) {
                         const int64_t bh = row / rows, i = row % rows;
                         const int64_t b = bh / pr.heads, h = bh % pr.heads;
                         const int64_t* keys = index + row * width;
                         if (row + 1 < pr.batch * pr.heads * rows)  // the next row's list, read while this one runs
                             for (int64_t j = 0; j < width; j += 8) __builtin_prefetch(keys + width + j, 0, 2);
                         int64_t n = 0;
                         for (int64_t any = 0; n + 8 <= width; n += 8) {  // 8 entries at a time: OR keeps a sign
                             for (int u = 0; u < 8; ++u) any |= keys[n + u];
                             if (any < 0) break;
                         }
                         while (n < width && keys[n] >= 0) ++n;
                         softmax_row<T, C>(q + b * pr.qs.b + h * pr.qs.h + i * pr.qs.n,
                                           k + b * pr.ks.b + h * pr.ks.h, v + b * pr.vs.b + h * pr.vs.h, keys, n,
                                           pr, scale, sc.a.data(), sc.acc.data(), out + row * pr.dim_v);
                     });
}

// dQ for spatial queries: dq_i = scale * sum_j p_ij (do_i . v_j - delta_i) k_j with p_ij = exp(s_ij - lse_i).
template <typename T, int C>
void backward_query(const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dq,
                    const Problem& pr, const Layout& layout, T scale, int threads) {
    parallel_rows<T>(pr.batch * pr.heads * layout.spatial, max_keys(layout), std::max(pr.dim, pr.dim_v), threads,
                     [&](int64_t row, Scratch<T>& sc) {
                         const int64_t bh = row / layout.spatial, i = row % layout.spatial;
                         const int64_t b = bh / pr.heads, h = bh % pr.heads;
                         const T* kb = k + b * pr.ks.b + h * pr.ks.h;
                         const int64_t n = pair_list(layout, i, sc.pairs.data());
                         T *s = sc.a.data(), *dp = sc.b.data();
                         gathered_dots<T, C>(q + b * pr.qs.b + h * pr.qs.h + (layout.prefix + i) * pr.qs.n, kb,
                                             sc.pairs.data(), n, pr.ks.n, pr.dim, s);
                         gathered_dots<T, C>(dout + row * pr.dim_v, v + b * pr.vs.b + h * pr.vs.h, sc.pairs.data(),
                                             n, pr.vs.n, pr.dim_v, dp);
                         const T l = lse[row] == T(-INFINITY) ? T(INFINITY) : lse[row], dl = delta[row];
#pragma omp simd
                         for (int64_t j = 0; j < n; ++j) s[j] = exp_of(s[j] * scale - l) * (dp[j] - dl);
                         gathered_sum<T, C>(s, kb, sc.pairs.data(), n, pr.ks.n, pr.dim, scale, sc.acc.data(),
                                            dq + row * pr.dim);
                     });
}

// dK, dV for spatial keys from spatial queries, key-major over the transposed layout (queries that see key j):
// dv_j = sum_i p_ij do_i, dk_j = scale * sum_i p_ij (do_i . v_j - delta_i) q_i.
template <typename T, int C>
void backward_key(const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dk, T* dv,
                  const Problem& pr, const Layout& transposed, T scale, int threads) {
    const int64_t spatial = transposed.spatial, prefix = transposed.prefix;
    parallel_rows<T>(pr.batch * pr.heads * spatial, max_keys(transposed), std::max(pr.dim, pr.dim_v), threads,
                     [&](int64_t row, Scratch<T>& sc) {
                         const int64_t bh = row / spatial, j = row % spatial;
                         const int64_t b = bh / pr.heads, h = bh % pr.heads;
                         const int64_t n = pair_list(transposed, j, sc.pairs.data()) - prefix;
                         int64_t* qi = sc.pairs.data() + prefix;  // token indices of the spatial queries seeing j
                         int64_t* query_rows = sc.rows.data();
                         for (int64_t t = 0; t < n; ++t) query_rows[t] = bh * spatial + qi[t] - prefix;
                         T *s = sc.a.data(), *dp = sc.b.data(), *p = sc.c.data();
                         const T* qb = q + b * pr.qs.b + h * pr.qs.h;
                         gathered_dots<T, C>(k + b * pr.ks.b + h * pr.ks.h + (prefix + j) * pr.ks.n, qb, qi, n,
                                             pr.qs.n, pr.dim, s);
                         gathered_dots<T, C>(v + b * pr.vs.b + h * pr.vs.h + (prefix + j) * pr.vs.n, dout,
                                             query_rows, n, pr.dim_v, pr.dim_v, dp);
                         for (int64_t t = 0; t < n; ++t) {
                             const T l = lse[query_rows[t]];
                             p[t] = exp_of(s[t] * scale - (l == T(-INFINITY) ? T(INFINITY) : l));
                             s[t] = p[t] * (dp[t] - delta[query_rows[t]]);
                         }
                         gathered_sum<T, C>(p, dout, query_rows, n, pr.dim_v, pr.dim_v, T(1), sc.acc.data(),
                                            dv + row * pr.dim_v);
                         gathered_sum<T, C>(s, qb, qi, n, pr.qs.n, pr.dim, scale, sc.acc.data(), dk + row * pr.dim);
                     });
}

// Runs KERNEL<T, C> with C = dim / lanes for the dims that have a register path, C = 0 otherwise.
#define VISATTN_DISPATCH(KERNEL, T, PR, ...)                                                       \
    switch ((PR).dim == (PR).dim_v && (PR).dim % Simd<T>::lanes == 0 ? (PR).dim / Simd<T>::lanes : 0) { \
        case 1: KERNEL<T, 1>(__VA_ARGS__); break;                                                   \
        case 2: KERNEL<T, 2>(__VA_ARGS__); break;                                                   \
        case 4: KERNEL<T, 4>(__VA_ARGS__); break;                                                   \
        case 8: KERNEL<T, 8>(__VA_ARGS__); break;                                                   \
        default: KERNEL<T, 0>(__VA_ARGS__); break;                                                  \
    }

}  // namespace

#define VISATTN_ENTRY_POINTS(T, SUFFIX)                                                                            \
    extern "C" void visattn_local_forward_##SUFFIX(                                                                \
        const T* q, const T* k, const T* v, T* out, T* lse, int64_t batch, int64_t heads, int64_t dim,           \
        int64_t dim_v, const int64_t* qs, const int64_t* ks, const int64_t* vs, int64_t ndim,                      \
        const int64_t* shape, const int64_t* start, const int64_t* count, const int64_t* step, int64_t prefix,   \
        double scale, int threads) {                                                                               \
        const Problem pr{batch, heads, dim, dim_v, {qs[0], qs[1], qs[2]}, {ks[0], ks[1], ks[2]},                  \
                         {vs[0], vs[1], vs[2]}};                                                                   \
        const Layout layout = make_layout(ndim, shape, start, count, step, prefix);                                \
        VISATTN_DISPATCH(forward, T, pr, q, k, v, out, lse, pr, layout, T(scale), threads)                        \
    }                                                                                                              \
    extern "C" void visattn_local_backward_##SUFFIX(                                                               \
        const T* q, const T* k, const T* v, const T* dout, const T* lse, const T* delta, T* dq, T* dk, T* dv,   \
        int64_t batch, int64_t heads, int64_t dim, int64_t dim_v, const int64_t* qs, const int64_t* ks,          \
        const int64_t* vs, int64_t ndim, const int64_t* shape, const int64_t* start, const int64_t* count,       \
        const int64_t* step, const int64_t* t_start, const int64_t* t_count, const int64_t* t_step,              \
        int64_t prefix, double scale, int threads) {                                                               \
        const Problem pr{batch, heads, dim, dim_v, {qs[0], qs[1], qs[2]}, {ks[0], ks[1], ks[2]},                  \
                         {vs[0], vs[1], vs[2]}};                                                                   \
        const Layout layout = make_layout(ndim, shape, start, count, step, prefix);                                \
        const Layout transposed = make_layout(ndim, shape, t_start, t_count, t_step, prefix);                      \
        VISATTN_DISPATCH(backward_query, T, pr, q, k, v, dout, lse, delta, dq, pr, layout, T(scale), threads)     \
        VISATTN_DISPATCH(backward_key, T, pr, q, k, v, dout, lse, delta, dk, dv, pr, transposed, T(scale),       \
                         threads)                                                                                  \
    }

#define VISATTN_INDEX_ENTRY(T, SUFFIX)                                                                             \
    extern "C" void visattn_index_forward_##SUFFIX(                                                                \
        const T* q, const T* k, const T* v, T* out, const int64_t* index, int64_t rows, int64_t width,           \
        int64_t batch, int64_t heads, int64_t dim, int64_t dim_v, const int64_t* qs, const int64_t* ks,          \
        const int64_t* vs, double scale, int threads) {                                                            \
        const Problem pr{batch, heads, dim, dim_v, {qs[0], qs[1], qs[2]}, {ks[0], ks[1], ks[2]},                  \
                         {vs[0], vs[1], vs[2]}};                                                                   \
        VISATTN_DISPATCH(index_forward, T, pr, q, k, v, out, index, rows, width, pr, T(scale), threads)           \
    }

VISATTN_INDEX_ENTRY(float, f32)
VISATTN_INDEX_ENTRY(double, f64)
VISATTN_ENTRY_POINTS(float, f32)
VISATTN_ENTRY_POINTS(double, f64)
