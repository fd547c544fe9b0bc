// Backward of the fused tile attention (tile_attention.cpp), for every tile list: FlashAttention-2's backward
// recomputing the probabilities from the forward's log-sum-exp.
//
// Built on demand by visattn/ops/native.py and called through ctypes (visattn/ops/tile_kernel.py).

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "tile_common.h"

namespace {

using namespace visattn;
using namespace visattn::tile;

// Per tile, with D = rowsum(dO * O) per query and the queries in vector lanes again (no tail rows):
//   St = K Qt (Qt scaled), P = exp(St - lse) (0 where masked), dPt = V dOt, dSt = P (dPt - D),
//   dQt = sum over chunks K^T dSt, dQ = scale dQt^T,
//   dV[j] += sum_u P[j, u] dO[u] and dK[j] += scale sum_u dSt[j, u] Q[u], per key row (each key's column of P and
//   dS against the query rows, read in place).
// Where tiles share keys (neighborhoods, halo, prefix tokens) each thread adds its dK and dV into its own zeroed copy
// (``dk_part`` and ``dv_part`` elements apart), which the caller sums (not bit-reproducible: threads claim tiles
// dynamically, so a tile's rounding lands in a different copy from run to run); where every key is in exactly one
// tile, its rows are stored (``add_keys`` = 0) into the one dK and dV.
template <typename T>
struct Gradients : Workspace<T> {
    std::vector<T> dot, dpt, dqt, lse, delta;  // delta: D = rowsum(dO * O) per lane
    std::vector<const T*> qrow, dorow;
    Gradients(int64_t max_q, int64_t d, int64_t dv)
        : Workspace<T>(max_q, d, dv),
          dot(dv * this->rows),
          dpt(kChunk * this->rows),
          dqt(d * this->rows),
          lse(this->rows),
          delta(this->rows),
          qrow(std::max<int64_t>(max_q, 1)),
          dorow(std::max<int64_t>(max_q, 1)) {}
};

// The backward's register blocks are kept apart from the forward's scores_block and accumulate_block, which take
// their operands from the workspace: one version taking operands as arguments for both made GCC spill the forward's
// loop counter to the stack (6% slower forward).
//
// y[j0 + r, u : u + V lanes] = sum_c rows[j0 + r][c] x[c, u : ...] for r < R keys.
template <typename T, int R, int V>
void lane_product_block(const Workspace<T>& w, const T* const* rows, const T* x, T* y, int64_t dim, int64_t j0,
                        int64_t u) {
    using S = Simd<T>;
    typename S::vec acc[R][V] = {};
    for (int64_t c = 0; c < dim; ++c) {
        typename S::vec xv[V];
        for (int b = 0; b < V; ++b) xv[b] = S::load(&x[c * w.rows + u + b * S::lanes]);
        for (int r = 0; r < R; ++r) {
            const T kv = rows[j0 + r][c];
            for (int b = 0; b < V; ++b) acc[r][b] += kv * xv[b];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < V; ++b) S::store(&y[(j0 + r) * w.rows + u + b * S::lanes], acc[r][b]);
}

// y[:keys, :lanes] = rows[:keys, :dim] x[:dim, :lanes] (St from K and Qt, dPt from V and dOt).
template <typename T>
void lane_product(const Workspace<T>& w, const T* const* rows, const T* x, T* y, int64_t dim, int64_t keys,
                  int64_t lanes) {
    row_blocks<T>(lanes, [&](auto v, int64_t u) {
        constexpr int V = decltype(v)::value;
        int64_t j = 0;
        for (; j + kBlock <= keys; j += kBlock) lane_product_block<T, kBlock, V>(w, rows, x, y, dim, j, u);
        for (; j < keys; ++j) lane_product_block<T, 1, V>(w, rows, x, y, dim, j, u);
    });
}

// y[c0 + r, u : ...] (+)= sum_j rows[j][c0 + r] x[j, u : ...] for r < R dims (a fresh y starts from zero).
template <typename T, int R, int V>
void lane_accumulate_block(const Workspace<T>& w, const T* const* rows, const T* x, T* y, bool fresh, int64_t keys,
                           int64_t c0, int64_t u) {
    using S = Simd<T>;
    typename S::vec acc[R][V] = {};
    if (!fresh)
        for (int r = 0; r < R; ++r)
            for (int b = 0; b < V; ++b) acc[r][b] = S::load(&y[(c0 + r) * w.rows + u + b * S::lanes]);
    for (int64_t j = 0; j < keys; ++j) {
        typename S::vec xv[V];
        for (int b = 0; b < V; ++b) xv[b] = S::load(&x[j * w.rows + u + b * S::lanes]);
        for (int r = 0; r < R; ++r) {
            const T kv = rows[j][c0 + r];
            for (int b = 0; b < V; ++b) acc[r][b] += kv * xv[b];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int b = 0; b < V; ++b) S::store(&y[(c0 + r) * w.rows + u + b * S::lanes], acc[r][b]);
}

// y[:dim, :lanes] (+)= rows[:keys, :dim]^T x[:keys, :lanes] (dQt from K and dSt).
template <typename T>
void lane_accumulate(const Workspace<T>& w, const T* const* rows, const T* x, T* y, int64_t dim, bool fresh,
                     int64_t keys, int64_t lanes) {
    row_blocks<T>(lanes, [&](auto v, int64_t u) {
        constexpr int V = decltype(v)::value;
        int64_t c = 0;
        for (; c + kBlock <= dim; c += kBlock) lane_accumulate_block<T, kBlock, V>(w, rows, x, y, fresh, keys, c, u);
        for (; c < dim; ++c) lane_accumulate_block<T, 1, V>(w, rows, x, y, fresh, keys, c, u);
    });
}

// out[idx[j], col : col + C lanes] (+)= factor * sum_{u < nq} x[j, u] rows[u][col : ...] for the chunk's keys: R
// keys x C vectors of columns per register block, each x element broadcast.
template <typename T, int C>
void key_gradient_rows(const Workspace<T>& w, const T* x, const T* const* rows, int64_t nq, T factor, bool add, T* ob,
                       const int64_t* idx, int64_t keys, int64_t on, int64_t col) {
    using S = Simd<T>;
    // R x C accumulators, C row vectors and a broadcast within the register file (32 or 16 vectors).
    constexpr int R = kVectorRegisters >= 32 ? (C <= 2 ? 8 : 4) : (C == 1 ? 8 : C == 2 ? 4 : 2);
    for (int64_t j0 = 0; j0 < keys; j0 += R) {
        typename S::vec acc[R][C] = {};
        for (int64_t u = 0; u < nq; ++u) {
            typename S::vec row[C];
            for (int c = 0; c < C; ++c) row[c] = S::load(rows[u] + col + c * S::lanes);
            for (int r = 0; r < R; ++r) {
                const T p = x[(j0 + r) * w.rows + u];
                for (int c = 0; c < C; ++c) acc[r][c] += p * row[c];
            }
        }
        for (int r = 0; r < R && j0 + r < keys; ++r)
            for (int c = 0; c < C; ++c) {
                T* dst = ob + idx[j0 + r] * on + col + c * S::lanes;
                S::store(dst, add ? S::load(dst) + acc[r][c] * factor : acc[r][c] * factor);
            }
    }
}

// key_gradient_rows for any width: 4 vectors of columns at a time, then the 1-3 left; scalar where the width is not
// a multiple of the vector width.
template <typename T>
void key_gradients(const Workspace<T>& w, const T* x, const T* const* rows, int64_t nq, int64_t dim, T factor,
                   bool add, T* ob, const int64_t* idx, int64_t keys, int64_t on) {
    constexpr int64_t L = Simd<T>::lanes;
    if (dim % L == 0) {
        int64_t col = 0;
        for (; col + 4 * L <= dim; col += 4 * L)
            key_gradient_rows<T, 4>(w, x, rows, nq, factor, add, ob, idx, keys, on, col);
        switch ((dim - col) / L) {
            case 1: return key_gradient_rows<T, 1>(w, x, rows, nq, factor, add, ob, idx, keys, on, col);
            case 2: return key_gradient_rows<T, 2>(w, x, rows, nq, factor, add, ob, idx, keys, on, col);
            case 3: return key_gradient_rows<T, 3>(w, x, rows, nq, factor, add, ob, idx, keys, on, col);
            default: return;
        }
    }
    for (int64_t j = 0; j < keys; ++j)
        for (int64_t c = 0; c < dim; ++c) {
            T acc = 0;
            for (int64_t u = 0; u < nq; ++u) acc += x[j * w.rows + u] * rows[u][c];
            T& dst = ob[idx[j] * on + c];
            dst = (add ? dst : T(0)) + acc * factor;
        }
}

// P = exp(St - lse) (0 where the mask is 0 and for lanes past the tile's queries, whose lse is +inf) into St, and
// dSt = P (dPt - D) into dPt.
template <typename T>
void softmax_gradient(Gradients<T>& w, int64_t keys, int64_t lanes, const uint8_t* mask, int64_t stride) {
    using S = Simd<T>;
    for (int64_t u = 0; u < lanes; u += S::lanes) {
        const typename S::vec lse = S::load(&w.lse[u]), delta = S::load(&w.delta[u]);
        for (int64_t j = 0; j < keys; ++j) {
            T* st = &w.st[j * w.rows + u];
            T* dpt = &w.dpt[j * w.rows + u];
            typename S::vec p = exp_vec<T>(S::load(st) - lse), ds = p * (S::load(dpt) - delta);
            if (mask) {
                // Both zeroed under the mask (not only P): a NaN D (the row's output is NaN) or dPt (a NaN in v)
                // must not reach the keys the row does not attend, whose gradients the reference keeps finite.
                const typename S::mask allowed = S::allowed(mask + j * stride + u);
                p = S::select(allowed, p, S::splat(T(0)));
                ds = S::select(allowed, ds, S::splat(T(0)));
            }
            S::store(st, p);
            S::store(dpt, ds);
        }
    }
}

// dq[tile queries] = factor * src^T (src [dim x lanes], zero where ``zero``), a vector block at a time through
// transpose_block where dim is a multiple of the vector width.
template <typename T>
void store_rows(const Workspace<T>& w, const T* src, bool zero, T factor, T* ob, const int64_t* qi, int64_t nq,
                int64_t on, int64_t dim) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    if (zero || dim % L != 0) {
        for (int64_t u = 0; u < nq; ++u)
            for (int64_t c = 0; c < dim; ++c) ob[qi[u] * on + c] = zero ? T(0) : src[c * w.rows + u] * factor;
        return;
    }
    typename S::vec block[L];
    for (int64_t u0 = 0; u0 < nq; u0 += L)
        for (int64_t c0 = 0; c0 < dim; c0 += L) {
            for (int64_t r = 0; r < L; ++r) block[r] = S::load(&src[(c0 + r) * w.rows + u0]) * factor;
            transpose_block<T>(block);
            for (int64_t r = 0; r < L && u0 + r < nq; ++r) S::store(ob + qi[u0 + r] * on + c0, block[r]);
        }
}

// delta[u] = D_u = dO[u] . O[u] for the tile's queries (0 past them): a vector of rows at a time through row_sums
// where dim_v is a multiple of the vector width.
template <typename T>
void row_deltas(T* delta, const T* dob, const T* ob, const int64_t* qi, int64_t nq, int64_t lanes, int64_t don,
                int64_t on, int64_t dim_v) {
    using S = Simd<T>;
    constexpr int64_t L = S::lanes;
    if (dim_v % L != 0) {
        for (int64_t u = 0; u < lanes; ++u) {
            T sum = 0;
            for (int64_t c = 0; u < nq && c < dim_v; ++c) sum += dob[qi[u] * don + c] * ob[qi[u] * on + c];
            delta[u] = sum;
        }
        return;
    }
    typename S::vec prod[L];
    for (int64_t u0 = 0; u0 < lanes; u0 += L) {
        for (int64_t r = 0; r < L; ++r) {
            prod[r] = S::splat(T(0));
            if (u0 + r < nq)
                for (int64_t c = 0; c < dim_v; c += L)
                    prod[r] += S::load(dob + qi[u0 + r] * don + c) * S::load(ob + qi[u0 + r] * on + c);
        }
        S::store(delta + u0, row_sums<T>(prod));
    }
}

struct GradientStrides {
    Strides q, k, v, out, dout, lse, dq, dk, dv;
};

template <typename T>
void backward_tile(const T* qb, const T* kb, const T* vb, const T* ob, const T* dob, const T* lseb, T* dqb, T* dkb,
                   T* dvb, int64_t dim, int64_t dim_v, const GradientStrides& s, const Tiles& tiles, int64_t t,
                   bool add_keys, T scale, Gradients<T>& w) {
    constexpr int64_t L = Simd<T>::lanes;
    const int64_t q0 = tiles.q_ptr[t], nq = tiles.q_ptr[t + 1] - q0, mask_stride = round_up(nq, kMaskAlign);
    const int64_t lanes = round_up(nq, L);
    const int64_t* qi = tiles.q_idx + q0;
    load_queries(w, w.qt.data(), qb, qi, nq, 0, s.q.n, dim, scale);
    load_queries(w, w.dot.data(), dob, qi, nq, 0, s.dout.n, dim_v, T(1));
    for (int64_t u = 0; u < lanes; ++u) {
        const T lse = u < nq ? lseb[qi[u] * s.lse.n] : T(INFINITY);
        w.lse[u] = lse == T(-INFINITY) ? T(INFINITY) : lse;
    }
    row_deltas(w.delta.data(), dob, ob, qi, nq, lanes, s.dout.n, s.out.n, dim_v);
    for (int64_t u = 0; u < nq; ++u) {
        w.qrow[u] = qb + qi[u] * s.q.n;
        w.dorow[u] = dob + qi[u] * s.dout.n;
    }
    bool fresh = true;
    for (int64_t seg = tiles.seg_ptr[t]; seg < tiles.seg_ptr[t + 1]; ++seg) {
        const int64_t k0 = tiles.key_ptr[seg], nk = tiles.key_ptr[seg + 1] - k0;
        const uint8_t* mask = tiles.mask_off[seg] >= 0 ? tiles.masks + tiles.mask_off[seg] : nullptr;
        for (int64_t j0 = 0; j0 < nk; j0 += kChunk) {
            const int64_t kc = std::min(kChunk, nk - j0);
            const int64_t* idx = tiles.k_idx + k0 + j0;
            key_rows(w, kb, vb, idx, kc, s.k.n, s.v.n);
            lane_product(w, w.krow, w.qt.data(), w.st.data(), dim, kc, lanes);
            lane_product(w, w.vrow, w.dot.data(), w.dpt.data(), dim_v, kc, lanes);
            softmax_gradient(w, kc, lanes, mask ? mask + j0 * mask_stride : nullptr, mask_stride);
            key_gradients(w, w.st.data(), w.dorow.data(), nq, dim_v, T(1), add_keys, dvb, idx, kc, s.dv.n);
            key_gradients(w, w.dpt.data(), w.qrow.data(), nq, dim, scale, add_keys, dkb, idx, kc, s.dk.n);
            lane_accumulate(w, w.krow, w.dpt.data(), w.dqt.data(), dim, fresh, kc, lanes);
            fresh = false;
        }
    }
    store_rows(w, w.dqt.data(), fresh, scale, dqb, qi, nq, s.dq.n, dim);
}

template <typename T>
void backward(const T* q, const T* k, const T* v, const T* out, const T* dout, const T* lse, T* dq, T* dk, T* dv,
              int64_t batch, int64_t heads, int64_t dim, int64_t dim_v, const GradientStrides& s, const Tiles& tiles,
              int64_t dk_part, int64_t dv_part, bool add_keys, T scale, int threads) {
    const int64_t work = batch * heads * tiles.count;
    const auto at = [&](auto* tensor, Strides st, int64_t item) { return item_slice(tensor, st, item, tiles, heads); };
#pragma omp parallel num_threads(threads)
    {
        Gradients<T> w(tiles.max_queries(), dim, dim_v);
#ifdef _OPENMP
        const int64_t thread = omp_get_thread_num();
#else
        const int64_t thread = 0;
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < work; ++item)
            backward_tile<T>(at(q, s.q, item), at(k, s.k, item), at(v, s.v, item), at(out, s.out, item),
                             at(dout, s.dout, item), at(lse, s.lse, item), at(dq, s.dq, item),
                             at(dk + thread * dk_part, s.dk, item), at(dv + thread * dv_part, s.dv, item), dim,
                             dim_v, s, tiles, item % tiles.count, add_keys, scale, w);
    }
}

}  // namespace

#define VISATTN_TILE_BACKWARD_ENTRY(T, SUFFIX)                                                                    \
    extern "C" void visattn_tile_backward_##SUFFIX(                                                                \
        const T* q, const T* k, const T* v, const T* out, const T* dout, const T* lse, T* dq, T* dk, T* dv,       \
        int64_t batch, int64_t heads, int64_t dim, int64_t dim_v, const int64_t* qs, const int64_t* ks,           \
        const int64_t* vs, const int64_t* os, const int64_t* dos, const int64_t* ls, const int64_t* dqs,          \
        const int64_t* dks, const int64_t* dvs, int64_t count, const int64_t* q_ptr, const int64_t* q_idx,        \
        const int64_t* seg_ptr, const int64_t* key_ptr, const int64_t* k_idx, const int64_t* mask_off,            \
        const uint8_t* masks, int64_t dk_part, int64_t dv_part, int64_t add_keys, double scale, int threads) {    \
        const Tiles tiles{count, q_ptr, q_idx, seg_ptr, key_ptr, k_idx, mask_off, masks};                         \
        const auto st = [](const int64_t* x) { return Strides{x[0], x[1], x[2]}; };                              \
        const GradientStrides s{st(qs), st(ks), st(vs), st(os), st(dos), st(ls), st(dqs), st(dks), st(dvs)};      \
        backward<T>(q, k, v, out, dout, lse, dq, dk, dv, batch, heads, dim, dim_v, s, tiles, dk_part, dv_part,   \
                    add_keys != 0, T(scale), threads);                                                             \
    }

VISATTN_TILE_BACKWARD_ENTRY(float, f32)
VISATTN_TILE_BACKWARD_ENTRY(double, f64)
