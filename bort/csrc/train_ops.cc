// Fused CPU operators for Bort's training graphs (forward and backward), loaded into MXNet with
// mx.library.load by bort/kernels.py. float32 only; rows are counted over every axis but the last.
//
// bort_layer_norm(x, gamma, beta; eps) -> (out, mean, rstd)
//   out = (x - mean) * rstd * gamma + beta per row, rstd = 1 / sqrt(var + eps); mean and rstd
//   (rows,) are kept for the backward only (their incoming gradients are ignored).
//   Backward: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * gamma,
//   dgamma = sum_rows dout * xhat, dbeta = sum_rows dout.
//
// bort_dropout(x, mode; p) -> (out, keep)
//   Inverted dropout: out = x * keep / (1 - p), keep (uint8) drawn with P(keep) = 1 - p, where
//   training; out = x, keep = 1 where not (see `mode`). Backward: dx = dout * keep / (1 - p).
//
// bort_self_attention(qkv, valid_length, mode; heads, p) -> (context, key)
//   MXNet's interleaved_matmul_selfatt_qk, the softmax over each row's valid keys, dropout and
//   interleaved_matmul_selfatt_valatt in one operator. qkv: (L, B, 3 * heads * d), per head
//   [q | k | v] of d channels; valid_length: (B,) float (len <= 0: every key).
//   P[b * heads + h, i, j] = softmax_j<len(q_i . k_j / sqrt(d)), 0 for j >= len (the same as a
//   -1e9 mask: padded keys weigh exactly 0); W = dropout(P) as bort_dropout;
//   context[i, b, h * d + :d] = sum_j W[., i, j] v_j. key (2,) int32: the dropout stream's key,
//   for the backward, which recomputes P and W.
//   Backward: dV = W^T dC, dW = dC V^T, dP = dW * keep / (1 - p), dS = P * (dP - sum_j P dP),
//   dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d).
//
// bort_sum_squares(a_0, ..., a_{n-1}; num_arrays) -> (1,) the L2 norm of all the arrays together,
//   accumulated in double in fixed blocks (the same result for any thread count).
//
// bort_adamw(weight_0, grad_0, mean_0, var_0, ..., rescale; ...): GluonNLP's BERT-Adam update of
//   many parameters in one operator (see below).
//
// bort_vocab_loss(s, [t,] labels; temperature, with_teacher) -> (nll, soft_ce, stats)
//   The masked-LM and distillation terms of each row of vocabulary logits, without writing any
//   (rows, V) intermediate. s, t: (..., V) student and teacher logits; labels (...,) float ids.
//   nll = lse(s) - s[label]; soft_ce = -sum_v q_v log softmax(s / T)_v = lse(s / T) -
//   sum_v q_v s_v / T with q = softmax(t / T) (0 without a teacher); stats (..., 4) =
//   [lse(s), lse(s / T), lse(t / T), hit]: the three normalisers kept for the backward, and
//   hit = 1 where s[label] is the row's maximum (the argmax prediction is right; a tie with an
//   earlier token counts as right), else 0.
//   Backward: ds_v = dnll (softmax(s)_v - [v = label]) + dce / T (softmax(s / T)_v - q_v);
//   dt and dlabels are written as 0 (teacher targets are constants).
//
// bort_sparse_soft_ce(s, ids, probs, tail; temperature) -> (ce, lse)
//   The soft cross-entropy of softmax(s / T) against a target given by k (id, probability)
//   pairs a row plus `tail`, the probability of every other token (the search's cached
//   teacher): ce = -sum_v a_v log softmax(s / T)_v = m lse(s / T) - sum_v a_v s_v / T with
//   a_v = probs_j at v = ids_j, tail elsewhere, m = sum_v a_v (1 up to rounding).
//   s (rows, V); ids, probs (rows, k); tail (rows,).
//   Backward: ds_v = dce / T (m softmax(s / T)_v - a_v); the targets get 0.
//
// Why `mode`: MXNet's library interface does not pass the training flag to an operator. `mode`
// is MXNet's own Dropout (p = 0.5) applied to a one-element array of ones: in training it is 0
// or 2, in inference exactly 1 (Dropout is then the identity), so the flag travels with the graph.
//
// Random numbers: one 64-bit key a call from MXNet's seeded CPU generator (mx.random.seed),
// then a counter-based hash (SplitMix64's finaliser) of (key, element index): reproducible, the
// same for any thread count, and vectorisable, unlike one std::mt19937 draw per element.
//
// Gradient requests: MXNet's library interface does not say whether an output gradient is to
// be written or added to; these backward functions always write. The Python side feeds
// parameters through an identity (whose backward honours 'add') and uses the operators only
// where MXNet writes intermediate gradients (see bort/kernels.py).
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using Attrs = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

namespace {

constexpr MXReturnValue kOk = MXReturnValue::MX_SUCCESS;
constexpr MXReturnValue kFail = MXReturnValue::MX_FAIL;

int IntAttr(const Attrs& attrs, const char* key, int fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stoi(it->second);
}

float FloatAttr(const Attrs& attrs, const char* key, float fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stof(it->second);
}

int64_t Rows(const MXTensor& t) { return t.size() / t.shape.back(); }

bool Training(const MXTensor& mode) { return *const_cast<MXTensor&>(mode).data<float>() != 1.f; }

// -- random bits ----------------------------------------------------------------------------------
uint64_t DrawKey(const OpResource& res) {
  mxnet::ext::mx_cpu_rand_t& gen = res.get_cpu_rand_states()[0];
  const uint64_t hi = gen(), lo = gen();
  return (hi << 32) | lo;
}

inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 32 random bits for element i: SplitMix64's output for counter i of the stream `key`.
inline uint32_t Bits(uint64_t key, int64_t i) {
  return static_cast<uint32_t>(Mix(key + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull) >> 32);
}

// Keep an element when its bits reach p * 2^32: P(keep) = 1 - p to within 2^-32.
uint32_t DropThreshold(float p) {
  const double t = std::ceil(static_cast<double>(p) * 4294967296.0);
  return t >= 4294967295.0 ? 4294967295u : static_cast<uint32_t>(t);
}

// exp(x) in float32 by x = k ln2 + r and a degree-6 Taylor polynomial of e^r (relative error
// ~2e-7): std::exp does not vectorise without -ffast-math, and the softmax is exp-bound.
inline float FastExp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float k = std::floor(x * 1.44269504f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float e = 1.f / 720.f;
  e = e * r + 1.f / 120.f;
  e = e * r + 1.f / 24.f;
  e = e * r + 1.f / 6.f;
  e = e * r + 0.5f;
  e = e * r + 1.f;
  e = e * r + 1.f;
  union {
    int32_t i;
    float f;
  } two_k;
  two_k.i = (static_cast<int32_t>(k) + 127) << 23;
  return e * two_k.f;
}

// -- LayerNorm ------------------------------------------------------------------------------------
MXReturnValue LayerNormForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                               std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& x = (*inputs)[0];
  const float* gamma = (*inputs)[1].data<float>();
  const float* beta = (*inputs)[2].data<float>();
  const int64_t width = x.shape.back();
  const int64_t rows = Rows(x);
  const float eps = FloatAttr(attrs, "eps", 1e-5f);
  const float* xs = x.data<float>();
  float* os = (*outputs)[0].data<float>();
  float* means = (*outputs)[1].data<float>();
  float* rstds = (*outputs)[2].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = xs + i * width;
    float* oi = os + i * width;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < width; ++j) sum += xi[j];
    const float mean = sum / static_cast<float>(width);
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < width; ++j) {
      const float d = xi[j] - mean;
      sq += d * d;
    }
    const float rstd = 1.f / std::sqrt(sq / static_cast<float>(width) + eps);
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) oi[j] = (xi[j] - mean) * rstd * gamma[j] + beta[j];
    means[i] = mean;
    rstds[i] = rstd;
  }
  return kOk;
}

// inputs: dout, dmean, drstd, x, gamma, beta, out, mean, rstd; outputs: dx, dgamma, dbeta.
MXReturnValue LayerNormBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                std::vector<MXTensor>* outputs, const OpResource& res) {
  const float* dout = (*inputs)[0].data<float>();
  MXTensor& x = (*inputs)[3];
  const float* gamma = (*inputs)[4].data<float>();
  const float* means = (*inputs)[7].data<float>();
  const float* rstds = (*inputs)[8].data<float>();
  const int64_t width = x.shape.back();
  const int64_t rows = Rows(x);
  const float* xs = x.data<float>();
  float* dx = (*outputs)[0].data<float>();
  float* dgamma = (*outputs)[1].data<float>();
  float* dbeta = (*outputs)[2].data<float>();
  // Per-thread partial sums of dgamma and dbeta over contiguous row ranges, added in thread
  // order afterwards (double: 1024+ rows of float products).
  const int threads = omp_get_max_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * 2 * width, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int n = omp_get_num_threads();
    const int64_t begin = rows * t / n, end = rows * (t + 1) / n;
    double* pg = partial.data() + static_cast<size_t>(t) * 2 * width;
    double* pb = pg + width;
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = xs + i * width;
      const float* di = dout + i * width;
      float* gi = dx + i * width;
      const float mean = means[i], rstd = rstds[i];
      float sum_g = 0.f, sum_gx = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t j = 0; j < width; ++j) {
        const float xhat = (xi[j] - mean) * rstd;
        const float g = di[j] * gamma[j];
        sum_g += g;
        sum_gx += g * xhat;
        pg[j] += static_cast<double>(di[j] * xhat);
        pb[j] += static_cast<double>(di[j]);
      }
      const float mg = sum_g / static_cast<float>(width);
      const float mgx = sum_gx / static_cast<float>(width);
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) {
        const float xhat = (xi[j] - mean) * rstd;
        gi[j] = rstd * (di[j] * gamma[j] - mg - xhat * mgx);
      }
    }
  }
  for (int64_t j = 0; j < width; ++j) {
    double g = 0.0, b = 0.0;
    for (int t = 0; t < threads; ++t) {
      g += partial[static_cast<size_t>(t) * 2 * width + j];
      b += partial[static_cast<size_t>(t) * 2 * width + width + j];
    }
    dgamma[j] = static_cast<float>(g);
    dbeta[j] = static_cast<float>(b);
  }
  return kOk;
}

MXReturnValue LayerNormAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 3;
  return kOk;
}

MXReturnValue AllFloat32(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  for (int type : *in_types) {
    if (type != mxnet::ext::kFloat32) {
      MX_ERROR_MSG << "bort training operators take float32 only";
      return kFail;
    }
  }
  for (int& type : *out_types) type = mxnet::ext::kFloat32;
  return kOk;
}

MXReturnValue LayerNormShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const std::vector<unsigned int>& x = (*in_shapes)[0];
  if (x.empty()) return kFail;
  for (int p = 1; p < 3; ++p) {
    const std::vector<unsigned int>& v = (*in_shapes)[p];
    if (v.size() != 1 || v[0] != x.back()) {
      MX_ERROR_MSG << "bort_layer_norm: gamma and beta must be (" << x.back() << ",)";
      return kFail;
    }
  }
  unsigned int rows = 1;
  for (size_t k = 0; k + 1 < x.size(); ++k) rows *= x[k];
  (*out_shapes)[0] = x;
  (*out_shapes)[1] = {rows};
  (*out_shapes)[2] = {rows};
  return kOk;
}

// -- dropout --------------------------------------------------------------------------------------
MXReturnValue DropoutForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& x = (*inputs)[0];
  const int64_t n = x.size();
  const float* xs = x.data<float>();
  float* os = (*outputs)[0].data<float>();
  uint8_t* keep = (*outputs)[1].data<uint8_t>();
  const float p = FloatAttr(attrs, "p", 0.f);
  if (!Training((*inputs)[1]) || p <= 0.f) {
    std::memcpy(os, xs, sizeof(float) * n);
    std::memset(keep, 1, n);
    return kOk;
  }
  const uint64_t key = DrawKey(res);
  const uint32_t threshold = DropThreshold(p);
  const float scale = 1.f / (1.f - p);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t k = Bits(key, i) >= threshold;
    keep[i] = k;
    os[i] = k ? xs[i] * scale : 0.f;
  }
  return kOk;
}

// inputs: dout, dkeep, x, mode, out, keep; outputs: dx, dmode.
MXReturnValue DropoutBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource& res) {
  const float* dout = (*inputs)[0].data<float>();
  const uint8_t* keep = (*inputs)[5].data<uint8_t>();
  MXTensor& dx = (*outputs)[0];
  const int64_t n = dx.size();
  float* ds = dx.data<float>();
  const float p = FloatAttr(attrs, "p", 0.f);
  const float scale = Training((*inputs)[3]) && p > 0.f ? 1.f / (1.f - p) : 1.f;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) ds[i] = keep[i] ? dout[i] * scale : 0.f;
  (*outputs)[1].data<float>()[0] = 0.f;
  return kOk;
}

MXReturnValue DropoutAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 2;
  return kOk;
}

MXReturnValue DropoutType(const Attrs& attrs, std::vector<int>* in_types,
                          std::vector<int>* out_types) {
  for (int type : *in_types) {
    if (type != mxnet::ext::kFloat32) return kFail;
  }
  (*out_types)[0] = mxnet::ext::kFloat32;
  (*out_types)[1] = mxnet::ext::kUint8;
  return kOk;
}

MXReturnValue DropoutShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const float p = FloatAttr(attrs, "p", 0.f);
  if (!(p >= 0.f && p < 1.f)) {
    MX_ERROR_MSG << "bort_dropout: p must be in [0, 1)";
    return kFail;
  }
  (*out_shapes)[0] = (*in_shapes)[0];
  (*out_shapes)[1] = (*in_shapes)[0];
  return kOk;
}

// -- self-attention -------------------------------------------------------------------------------
// Small matrix products of one (batch row, head): R rows x W vectors of C held in registers
// while one row of B and R scalars of A stream past. MXNet's interleaved attention products run
// each (128 x 32) x (32 x 128) head product as a BLAS call at ~5x the time of the arithmetic;
// these stay in L1 and are fused with the softmax and dropout. The block fits the register file
// of the ISA compiled for: with AVX-512, 16-float vectors and 6 x 4 accumulators (24 of 32
// registers); with AVX2, 8-float vectors and 6 x 2 accumulators (12 of 16 registers; a 6 x 4
// block of 16-float vectors would need 48 and spill, measured 4x slower).
#if defined(__AVX512F__)
typedef float Vec __attribute__((vector_size(64), aligned(4)));
constexpr int kVecLanes = 16;
#else
typedef float Vec __attribute__((vector_size(32), aligned(4)));
constexpr int kVecLanes = 8;
#endif
// Rows of packed operands are padded to multiples of kLanes floats (64 bytes).
constexpr int kLanes = 16;

inline int64_t RoundUp(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// C[i, c0 + :kVecLanes W] = alpha * sum_k A(i, k) * B[k, c0 + :kVecLanes W] for rows i in
// [r0, r0 + R), where A(i, k) = a[i * a_row + k * a_col] (either layout: transposed A costs
// nothing here).
template <int R, int W>
inline void Block(int64_t r0, int64_t c0, int64_t depth, const float* a, int64_t a_row,
                  int64_t a_col, const float* b, int64_t ldb, float* c, int64_t ldc,
                  float alpha) {
  Vec acc[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) acc[r][w] = Vec{};
  for (int64_t k = 0; k < depth; ++k) {
    Vec bv[W];
    const float* row = b + k * ldb + c0;
    for (int w = 0; w < W; ++w) bv[w] = *reinterpret_cast<const Vec*>(row + w * kVecLanes);
    for (int r = 0; r < R; ++r) {
      const float av = a[(r0 + r) * a_row + k * a_col];
      for (int w = 0; w < W; ++w) acc[r][w] += av * bv[w];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w)
      *reinterpret_cast<Vec*>(c + (r0 + r) * ldc + c0 + w * kVecLanes) = alpha * acc[r][w];
}

template <int R, int W>
inline void Rows(int64_t rows, int64_t c0, int64_t depth, const float* a, int64_t a_row,
                 int64_t a_col, const float* b, int64_t ldb, float* c, int64_t ldc,
                 float alpha) {
  int64_t r0 = 0;
  for (; r0 + R <= rows; r0 += R) {
    Block<R, W>(r0, c0, depth, a, a_row, a_col, b, ldb, c, ldc, alpha);
  }
  for (; r0 < rows; ++r0) Block<1, W>(r0, c0, depth, a, a_row, a_col, b, ldb, c, ldc, alpha);
}

// C (rows x cols, ldc) = alpha * A (rows x depth) * B (depth x cols, ldb); cols, ldb and ldc
// multiples of kLanes (operands are packed with zero padding), B and C 64-byte rows.
void Gemm(int64_t rows, int64_t cols, int64_t depth, const float* a, int64_t a_row,
          int64_t a_col, const float* b, int64_t ldb, float* c, int64_t ldc, float alpha) {
  int64_t c0 = 0;
#if defined(__AVX512F__)
  for (; c0 + 4 * kVecLanes <= cols; c0 += 4 * kVecLanes)
    Rows<6, 4>(rows, c0, depth, a, a_row, a_col, b, ldb, c, ldc, alpha);
  for (; c0 + 2 * kVecLanes <= cols; c0 += 2 * kVecLanes)
    Rows<8, 2>(rows, c0, depth, a, a_row, a_col, b, ldb, c, ldc, alpha);
#else
  for (; c0 + 2 * kVecLanes <= cols; c0 += 2 * kVecLanes)
    Rows<6, 2>(rows, c0, depth, a, a_row, a_col, b, ldb, c, ldc, alpha);
#endif
  for (; c0 < cols; c0 += kVecLanes) {
    Rows<8, 1>(rows, c0, depth, a, a_row, a_col, b, ldb, c, ldc, alpha);
  }
}

// Rows (count x width) at `src` with row stride `stride` into `dst` (count x RoundUp(width)),
// zero-padded; transposed (width x RoundUp(count)) when `transpose`.
void Pack(const float* src, int64_t stride, int64_t count, int64_t width, float* dst,
          bool transpose) {
  if (transpose) {
    const int64_t ld = RoundUp(count);
    for (int64_t j = 0; j < width; ++j) {
      float* row = dst + j * ld;
      for (int64_t i = 0; i < count; ++i) row[i] = src[i * stride + j];
      for (int64_t i = count; i < ld; ++i) row[i] = 0.f;
    }
    return;
  }
  const int64_t ld = RoundUp(width);
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(dst + i * ld, src + i * stride, sizeof(float) * width);
    for (int64_t j = width; j < ld; ++j) dst[i * ld + j] = 0.f;
  }
}

// Padded rows (count x RoundUp(width)) back to rows with stride `stride`.
void Unpack(const float* src, int64_t count, int64_t width, float* dst, int64_t stride) {
  const int64_t ld = RoundUp(width);
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(dst + i * stride, src + i * ld, sizeof(float) * width);
  }
}

struct Attention {
  int64_t length, batch, heads, depth;  // L, B, A, d
  int64_t Row() const { return batch * heads * depth * 3; }  // qkv row stride: B * 3H
  // Head h of batch row b: q, k, v start here (row stride Row()).
  const float* Q(const float* qkv, int64_t b, int64_t h) const {
    return qkv + b * heads * depth * 3 + h * depth * 3;
  }
};

Attention Shape(const MXTensor& qkv, const Attrs& attrs) {
  Attention at;
  at.length = qkv.shape[0];
  at.batch = qkv.shape[1];
  at.heads = IntAttr(attrs, "heads", 1);
  at.depth = qkv.shape[2] / (3 * at.heads);
  return at;
}

// The attention weights of one (batch row, head), rows of L16 floats in `w`, and the
// probabilities before dropout in `probs`: scores from Q and the packed K^T, the softmax over
// the first `len` keys, dropout from the call's key (the same bits in the backward).
void AttentionWeights(const Attention& at, const float* q, const float* kt, int64_t len,
                      int64_t task, uint64_t key, bool drop, uint32_t threshold, float keep_scale,
                      float* probs, float* w) {
  const int64_t L = at.length, L16 = RoundUp(L);
  Gemm(L, L16, at.depth, q, at.Row(), 1, kt, L16, probs, L16,
       1.f / std::sqrt(static_cast<float>(at.depth)));
  for (int64_t i = 0; i < L; ++i) {
    float* pi = probs + i * L16;
    float* wi = w + i * L16;
    float top = -3.0e38f;
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < len; ++j) top = pi[j] > top ? pi[j] : top;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < len; ++j) {
      const float e = FastExp(pi[j] - top);
      pi[j] = e;
      sum += e;
    }
    const float inv = 1.f / sum;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) pi[j] *= inv;
    for (int64_t j = len; j < L16; ++j) pi[j] = 0.f;
    if (drop) {
      const int64_t base = (task * L + i) * L;
#pragma omp simd
      for (int64_t j = 0; j < L; ++j) {
        wi[j] = Bits(key, base + j) >= threshold ? pi[j] * keep_scale : 0.f;
      }
      for (int64_t j = L; j < L16; ++j) wi[j] = 0.f;
    } else {
      std::memcpy(wi, pi, sizeof(float) * L16);
    }
  }
}

int64_t ValidKeys(const float* valid, int64_t b, int64_t L) {
  const int64_t len = static_cast<int64_t>(valid[b] + 0.5f);
  return len <= 0 || len > L ? L : len;
}

// inputs: qkv (L, B, 3H), valid_length (B,), mode; outputs: context (L, B, H) and the dropout
// key (2,) int32. The weights are not kept: the backward recomputes them (one product of the
// six and a softmax), cheaper on 2 cores than writing, zero-filling (MXNet's gradient of an
// unused output) and reading back two (B * heads, L, L) arrays a layer.
MXReturnValue SelfAttentionForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  const Attention at = Shape((*inputs)[0], attrs);
  const float* qkv = (*inputs)[0].data<float>();
  const float* valid = (*inputs)[1].data<float>();
  const float p = FloatAttr(attrs, "p", 0.f);
  const bool drop = Training((*inputs)[2]) && p > 0.f;
  const uint64_t key = drop ? DrawKey(res) : 0;
  const uint32_t threshold = DropThreshold(p);
  const float keep_scale = drop ? 1.f / (1.f - p) : 1.f;
  float* context = (*outputs)[0].data<float>();
  uint32_t* key_out = (*outputs)[1].data<uint32_t>();
  key_out[0] = static_cast<uint32_t>(key >> 32);
  key_out[1] = static_cast<uint32_t>(key);
  const int64_t L = at.length, d = at.depth, L16 = RoundUp(L), d16 = RoundUp(d);
  const int64_t tasks = at.batch * at.heads;
#pragma omp parallel
  {
    std::vector<float> kt(d * L16), vp(L * d16), pr(L * L16), w(L * L16), out(L * d16);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / at.heads, h = t % at.heads;
      const float* q = at.Q(qkv, b, h);
      Pack(q + d, at.Row(), L, d, kt.data(), true);       // K^T: d x L16
      Pack(q + 2 * d, at.Row(), L, d, vp.data(), false);  // V: L x d16
      AttentionWeights(at, q, kt.data(), ValidKeys(valid, b, L), t, key, drop, threshold,
                       keep_scale, pr.data(), w.data());
      Gemm(L, d16, L, w.data(), L16, 1, vp.data(), d16, out.data(), d16, 1.f);
      Unpack(out.data(), L, d, context + b * at.heads * d + h * d, at.batch * at.heads * d);
    }
  }
  return kOk;
}

// inputs: dcontext, dkey, qkv, valid_length, mode, context, key; outputs: dqkv, dvalid_length,
// dmode.
MXReturnValue SelfAttentionBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                    std::vector<MXTensor>* outputs, const OpResource& res) {
  const float* dcontext = (*inputs)[0].data<float>();
  const Attention at = Shape((*inputs)[2], attrs);
  const float* qkv = (*inputs)[2].data<float>();
  const float* valid = (*inputs)[3].data<float>();
  const uint32_t* key_in = (*inputs)[6].data<uint32_t>();
  const uint64_t key = (static_cast<uint64_t>(key_in[0]) << 32) | key_in[1];
  const float p = FloatAttr(attrs, "p", 0.f);
  const bool drop = Training((*inputs)[4]) && p > 0.f;
  const uint32_t threshold = DropThreshold(p);
  const float keep_scale = drop ? 1.f / (1.f - p) : 1.f;
  const float scale = 1.f / std::sqrt(static_cast<float>(at.depth));
  float* dqkv = (*outputs)[0].data<float>();
  const int64_t L = at.length, d = at.depth, L16 = RoundUp(L), d16 = RoundUp(d);
  const int64_t tasks = at.batch * at.heads;
  const int64_t ctx_row = at.batch * at.heads * d;
#pragma omp parallel
  {
    std::vector<float> kt(d * L16), vt(d * L16), kp(L * d16), qp(L * d16), dc(L * d16),
        pr(L * L16), w(L * L16), ds(L * L16), out(L * d16);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / at.heads, h = t % at.heads;
      const float* q = at.Q(qkv, b, h);
      float* dq = dqkv + (q - qkv);
      Pack(q, at.Row(), L, d, qp.data(), false);
      Pack(q + d, at.Row(), L, d, kp.data(), false);
      Pack(q + d, at.Row(), L, d, kt.data(), true);
      Pack(q + 2 * d, at.Row(), L, d, vt.data(), true);
      Pack(dcontext + b * at.heads * d + h * d, ctx_row, L, d, dc.data(), false);
      AttentionWeights(at, q, kt.data(), ValidKeys(valid, b, L), t, key, drop, threshold,
                       keep_scale, pr.data(), w.data());
      // dV = W^T dC
      Gemm(L, d16, L, w.data(), 1, L16, dc.data(), d16, out.data(), d16, 1.f);
      Unpack(out.data(), L, d, dq + 2 * d, at.Row());
      // dW = dC V^T, then through dropout and softmax: dS = P * (dP - sum(P * dP))
      Gemm(L, L16, d, dc.data(), d16, 1, vt.data(), L16, ds.data(), L16, 1.f);
      for (int64_t i = 0; i < L; ++i) {
        float* gi = ds.data() + i * L16;
        const float* pi = pr.data() + i * L16;
        const float* wi = w.data() + i * L16;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < L; ++j) {
          const float dp = drop ? (wi[j] != 0.f ? gi[j] * keep_scale : 0.f) : gi[j];
          gi[j] = dp;
          dot += dp * pi[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < L; ++j) gi[j] = pi[j] * (gi[j] - dot);
        for (int64_t j = L; j < L16; ++j) gi[j] = 0.f;
      }
      // dQ = scale dS K, dK = scale dS^T Q
      Gemm(L, d16, L, ds.data(), L16, 1, kp.data(), d16, out.data(), d16, scale);
      Unpack(out.data(), L, d, dq, at.Row());
      Gemm(L, d16, L, ds.data(), 1, L16, qp.data(), d16, out.data(), d16, scale);
      Unpack(out.data(), L, d, dq + d, at.Row());
    }
  }
  std::memset((*outputs)[1].data<float>(), 0, sizeof(float) * (*outputs)[1].size());
  (*outputs)[2].data<float>()[0] = 0.f;
  return kOk;
}

MXReturnValue SelfAttentionAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 3;
  *num_out = 2;
  return kOk;
}

MXReturnValue SelfAttentionType(const Attrs& attrs, std::vector<int>* in_types,
                                std::vector<int>* out_types) {
  for (int type : *in_types) {
    if (type != mxnet::ext::kFloat32) return kFail;
  }
  (*out_types)[0] = mxnet::ext::kFloat32;
  (*out_types)[1] = mxnet::ext::kInt32;
  return kOk;
}

MXReturnValue SelfAttentionShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const std::vector<unsigned int>& qkv = (*in_shapes)[0];
  const std::vector<unsigned int>& valid = (*in_shapes)[1];
  const int heads = IntAttr(attrs, "heads", 1);
  const float p = FloatAttr(attrs, "p", 0.f);
  if (qkv.size() != 3 || valid.size() != 1 || heads < 1 || valid[0] != qkv[1] ||
      qkv[2] % (3 * heads) != 0 || !(p >= 0.f && p < 1.f)) {
    MX_ERROR_MSG << "bort_self_attention: qkv must be (L, B, 3 * heads * d), valid_length (B,), "
                 << "p in [0, 1)";
    return kFail;
  }
  (*out_shapes)[0] = {qkv[0], qkv[1], qkv[2] / 3};
  (*out_shapes)[1] = {2};
  return kOk;
}

// -- the global norm ------------------------------------------------------------------------------
constexpr int64_t kNormBlock = 1 << 16;

MXReturnValue SumSquaresForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                std::vector<MXTensor>* outputs, const OpResource& res) {
  // Fixed blocks of every array, each summed in double, then added in order.
  std::vector<std::pair<const float*, int64_t>> blocks;
  for (MXTensor& t : *inputs) {
    const float* data = t.data<float>();
    const int64_t n = t.size();
    for (int64_t b = 0; b < n; b += kNormBlock) {
      blocks.emplace_back(data + b, n - b < kNormBlock ? n - b : kNormBlock);
    }
  }
  std::vector<double> partial(blocks.size(), 0.0);
  const int64_t count = static_cast<int64_t>(blocks.size());
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t b = 0; b < count; ++b) {
    const float* data = blocks[b].first;
    const int64_t n = blocks[b].second;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) sum += static_cast<double>(data[j]) * data[j];
    partial[b] = sum;
  }
  double total = 0.0;
  for (double v : partial) total += v;
  (*outputs)[0].data<float>()[0] = static_cast<float>(std::sqrt(total));
  return kOk;
}

MXReturnValue SumSquaresAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = IntAttr(attrs, "num_arrays", 1);
  *num_out = 1;
  return *num_in >= 1 ? kOk : kFail;
}

MXReturnValue SumSquaresShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  (*out_shapes)[0] = {1};
  return kOk;
}

// -- BERT-Adam ------------------------------------------------------------------------------------
// inputs: weight_0, grad_0, mean_0, var_0, ..., weight_{n-1}, ..., var_{n-1}, rescale (1,);
// outputs: the n weights (MXNet aliases them to the inputs: out=weights); mean and var are
// mutated inputs. Attributes: num_arrays, lrs and wds (n comma-separated values), beta1,
// beta2, epsilon, clip_gradient (< 0: none). Per element, in MXNet's adamw_update order:
//   g = clip(grad * rescale), mean = b1 mean + (1 - b1) g, var = b2 var + (1 - b2) g^2,
//   weight = weight - lr (mean / (sqrt(var) + eps) + wd weight);
// skipped where rescale is 0 or not finite, as MXNet's. One pass over each parameter's four
// arrays in blocks spread over the threads, where MXNet runs one operator per 4 parameters.
std::vector<float> FloatList(const Attrs& attrs, const char* key) {
  std::vector<float> values;
  auto it = attrs.find(key);
  if (it == attrs.end()) return values;
  size_t start = 0;
  const std::string& text = it->second;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    values.push_back(std::stof(text.substr(start, end - start)));
    start = end + 1;
  }
  return values;
}

MXReturnValue AdamWForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                           std::vector<MXTensor>* outputs, const OpResource& res) {
  const int n = IntAttr(attrs, "num_arrays", 1);
  const float rescale = (*inputs)[4 * n].data<float>()[0];
  if (!std::isfinite(rescale) || rescale == 0.f) return kOk;
  const std::vector<float> lrs = FloatList(attrs, "lrs"), wds = FloatList(attrs, "wds");
  if (static_cast<int>(lrs.size()) != n || static_cast<int>(wds.size()) != n) {
    MX_ERROR_MSG << "bort_adamw: lrs and wds need num_arrays values";
    return kFail;
  }
  const float beta1 = FloatAttr(attrs, "beta1", 0.9f), beta2 = FloatAttr(attrs, "beta2", 0.999f);
  const float eps = FloatAttr(attrs, "epsilon", 1e-6f);
  const float clip = FloatAttr(attrs, "clip_gradient", -1.f);
  struct Piece {
    int array;
    int64_t begin, end;
  };
  std::vector<Piece> pieces;
  for (int a = 0; a < n; ++a) {
    const int64_t size = (*inputs)[4 * a].size();
    for (int64_t b = 0; b < size; b += kNormBlock) {
      pieces.push_back({a, b, b + kNormBlock < size ? b + kNormBlock : size});
    }
  }
  const int64_t count = static_cast<int64_t>(pieces.size());
#pragma omp parallel for schedule(dynamic, 2)
  for (int64_t k = 0; k < count; ++k) {
    const Piece& piece = pieces[k];
    const int a = piece.array;
    const float* w = (*inputs)[4 * a].data<float>();
    const float* g = (*inputs)[4 * a + 1].data<float>();
    float* mean = (*inputs)[4 * a + 2].data<float>();
    float* var = (*inputs)[4 * a + 3].data<float>();
    float* out = (*outputs)[a].data<float>();
    const float lr = lrs[a], wd = wds[a];
#pragma omp simd
    for (int64_t i = piece.begin; i < piece.end; ++i) {
      float scaled = g[i] * rescale;
      if (clip >= 0.f) scaled = scaled > clip ? clip : (scaled < -clip ? -clip : scaled);
      const float m = beta1 * mean[i] + (1.f - beta1) * scaled;
      const float v = beta2 * var[i] + (1.f - beta2) * scaled * scaled;
      mean[i] = m;
      var[i] = v;
      out[i] = w[i] - lr * (m / (std::sqrt(v) + eps) + wd * w[i]);
    }
  }
  return kOk;
}

MXReturnValue AdamWAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  const int n = IntAttr(attrs, "num_arrays", 1);
  *num_in = 4 * n + 1;
  *num_out = n;
  return n >= 1 ? kOk : kFail;
}

MXReturnValue AdamWShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const int n = IntAttr(attrs, "num_arrays", 1);
  for (int a = 0; a < n; ++a) {
    for (int k = 1; k < 4; ++k) {
      if ((*in_shapes)[4 * a + k] != (*in_shapes)[4 * a]) {
        MX_ERROR_MSG << "bort_adamw: weight, grad, mean and var of array " << a
                     << " differ in shape";
        return kFail;
      }
    }
    (*out_shapes)[a] = (*in_shapes)[4 * a];
  }
  return kOk;
}

MXReturnValue AdamWMutate(const Attrs& attrs, std::vector<int>* indices) {
  const int n = IntAttr(attrs, "num_arrays", 1);
  for (int a = 0; a < n; ++a) {
    indices->push_back(4 * a + 2);
    indices->push_back(4 * a + 3);
  }
  return kOk;
}

// -- masked-LM and distillation losses over the vocabulary ---------------------------------------
// Per row, two passes over s (max, then both sums of exponentials) and two over t (max, then
// its normaliser and sum_v exp((t_v - max) / T) s_v) forward; one pass backward. MXNet's own
// log_softmax, softmax, pick, multiply and sums (and their backward) make ~15 passes over
// (rows, V) arrays, each written to fresh memory.
struct VocabRows {
  int64_t rows, vocab;
  bool teacher;
};

VocabRows VocabShape(const std::vector<MXTensor>& inputs, const Attrs& attrs) {
  VocabRows v;
  v.vocab = inputs[0].shape.back();
  v.rows = Rows(inputs[0]);
  v.teacher = IntAttr(attrs, "with_teacher", 1) != 0;
  return v;
}

// A token id carried as a float; out-of-range ids (never written by the callers) read token 0.
inline int64_t TokenId(float id, int64_t vocab) {
  const int64_t v = static_cast<int64_t>(id + 0.5f);
  return v < 0 || v >= vocab ? 0 : v;
}

// The backward's gradients of the non-differentiable inputs (targets, labels): zero.
void ZeroOutputsAfterFirst(std::vector<MXTensor>* outputs) {
  for (size_t o = 1; o < outputs->size(); ++o) {
    std::memset((*outputs)[o].data<float>(), 0, sizeof(float) * (*outputs)[o].size());
  }
}

inline float RowMax(const float* x, int64_t n) {
  float top = -3.0e38f;
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < n; ++j) top = x[j] > top ? x[j] : top;
  return top;
}

// inputs: s, [t,] labels; outputs: nll, soft_ce, stats.
MXReturnValue VocabLossForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                               std::vector<MXTensor>* outputs, const OpResource& res) {
  const VocabRows v = VocabShape(*inputs, attrs);
  const float temperature = FloatAttr(attrs, "temperature", 1.f), inv_t = 1.f / temperature;
  const float* s = (*inputs)[0].data<float>();
  const float* t = v.teacher ? (*inputs)[1].data<float>() : nullptr;
  const float* labels = (*inputs)[v.teacher ? 2 : 1].data<float>();
  float* nll = (*outputs)[0].data<float>();
  float* soft_ce = (*outputs)[1].data<float>();
  float* stats = (*outputs)[2].data<float>();
  const int64_t V = v.vocab;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < v.rows; ++r) {
    const float* sr = s + r * V;
    const float top = RowMax(sr, V);
    float sum1 = 0.f, sum_t = 0.f;
#pragma omp simd reduction(+ : sum1, sum_t)
    for (int64_t j = 0; j < V; ++j) {
      const float d = sr[j] - top;
      sum1 += FastExp(d);
      sum_t += FastExp(d * inv_t);
    }
    const float lse = top + std::log(sum1), lse_t = top * inv_t + std::log(sum_t);
    nll[r] = lse - sr[TokenId(labels[r], V)];
    float ce = 0.f, lse_teacher = 0.f;
    if (t != nullptr) {
      const float* tr = t + r * V;
      const float t_top = RowMax(tr, V);
      float z = 0.f, dot = 0.f;
#pragma omp simd reduction(+ : z, dot)
      for (int64_t j = 0; j < V; ++j) {
        const float e = FastExp((tr[j] - t_top) * inv_t);
        z += e;
        dot += e * sr[j];
      }
      lse_teacher = t_top * inv_t + std::log(z);
      ce = lse_t - dot / z * inv_t;
    }
    soft_ce[r] = ce;
    stats[4 * r] = lse;
    stats[4 * r + 1] = lse_t;
    stats[4 * r + 2] = lse_teacher;
    stats[4 * r + 3] = sr[TokenId(labels[r], V)] >= top ? 1.f : 0.f;
  }
  return kOk;
}

// inputs: dnll, dsoft_ce, dstats, s, [t,] labels, nll, soft_ce, stats; outputs: ds, [dt,]
// dlabels.
MXReturnValue VocabLossBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                std::vector<MXTensor>* outputs, const OpResource& res) {
  std::vector<MXTensor> forward_inputs((*inputs).begin() + 3, (*inputs).end());
  const VocabRows v = VocabShape(forward_inputs, attrs);
  const float temperature = FloatAttr(attrs, "temperature", 1.f), inv_t = 1.f / temperature;
  const float* dnll = (*inputs)[0].data<float>();
  const float* dce = (*inputs)[1].data<float>();
  const float* s = (*inputs)[3].data<float>();
  const float* t = v.teacher ? (*inputs)[4].data<float>() : nullptr;
  const int at = v.teacher ? 5 : 4;
  const float* labels = (*inputs)[at].data<float>();
  const float* stats = (*inputs)[at + 3].data<float>();
  float* ds = (*outputs)[0].data<float>();
  const int64_t V = v.vocab;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < v.rows; ++r) {
    const float* sr = s + r * V;
    float* dr = ds + r * V;
    const float g1 = dnll[r], g2 = t != nullptr ? dce[r] * inv_t : 0.f;
    const float lse = stats[4 * r], lse_t = stats[4 * r + 1], lse_teacher = stats[4 * r + 2];
    if (t != nullptr) {
      const float* tr = t + r * V;
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        dr[j] = g1 * FastExp(sr[j] - lse) +
                g2 * (FastExp(sr[j] * inv_t - lse_t) - FastExp(tr[j] * inv_t - lse_teacher));
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) dr[j] = g1 * FastExp(sr[j] - lse);
    }
    dr[TokenId(labels[r], V)] -= g1;
  }
  ZeroOutputsAfterFirst(outputs);
  return kOk;
}

MXReturnValue VocabLossAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = IntAttr(attrs, "with_teacher", 1) != 0 ? 3 : 2;
  *num_out = 3;
  return kOk;
}

MXReturnValue VocabLossShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const std::vector<unsigned int>& s = (*in_shapes)[0];
  const bool teacher = IntAttr(attrs, "with_teacher", 1) != 0;
  const std::vector<unsigned int>& labels = (*in_shapes)[teacher ? 2 : 1];
  std::vector<unsigned int> rows(s.begin(), s.end() - (s.empty() ? 0 : 1));
  const float temperature = FloatAttr(attrs, "temperature", 1.f);
  if (s.size() < 2 || labels != rows || (teacher && (*in_shapes)[1] != s) ||
      !(temperature > 0.f)) {
    MX_ERROR_MSG << "bort_vocab_loss: s (..., V), t like s, labels (...,), temperature > 0";
    return kFail;
  }
  (*out_shapes)[0] = rows;
  (*out_shapes)[1] = rows;
  rows.push_back(4);
  (*out_shapes)[2] = rows;
  return kOk;
}

// inputs: s, ids, probs, tail; outputs: ce, lse.
MXReturnValue SparseSoftCEForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                  std::vector<MXTensor>* outputs, const OpResource& res) {
  const int64_t V = (*inputs)[0].shape.back(), rows = Rows((*inputs)[0]);
  const int64_t k = (*inputs)[1].shape.back();
  const float inv_t = 1.f / FloatAttr(attrs, "temperature", 1.f);
  const float* s = (*inputs)[0].data<float>();
  const float* ids = (*inputs)[1].data<float>();
  const float* probs = (*inputs)[2].data<float>();
  const float* tail = (*inputs)[3].data<float>();
  float* ce = (*outputs)[0].data<float>();
  float* lses = (*outputs)[1].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* sr = s + r * V;
    const float top = RowMax(sr, V);
    float z = 0.f, total = 0.f;
#pragma omp simd reduction(+ : z, total)
    for (int64_t j = 0; j < V; ++j) {
      z += FastExp((sr[j] - top) * inv_t);
      total += sr[j];
    }
    const float lse = top * inv_t + std::log(z);
    float dot = tail[r] * total;                        // sum_v a_v s_v
    float mass = tail[r] * static_cast<float>(V - k);  // sum_v a_v
    for (int64_t j = 0; j < k; ++j) {
      dot += (probs[r * k + j] - tail[r]) * sr[TokenId(ids[r * k + j], V)];
      mass += probs[r * k + j];
    }
    ce[r] = mass * lse - dot * inv_t;
    lses[r] = lse;
  }
  return kOk;
}

// inputs: dce, dlse, s, ids, probs, tail, ce, lse; outputs: ds, dids, dprobs, dtail.
MXReturnValue SparseSoftCEBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  const int64_t V = (*inputs)[2].shape.back(), rows = Rows((*inputs)[2]);
  const int64_t k = (*inputs)[3].shape.back();
  const float inv_t = 1.f / FloatAttr(attrs, "temperature", 1.f);
  const float* dce = (*inputs)[0].data<float>();
  const float* s = (*inputs)[2].data<float>();
  const float* ids = (*inputs)[3].data<float>();
  const float* probs = (*inputs)[4].data<float>();
  const float* tail = (*inputs)[5].data<float>();
  const float* lses = (*inputs)[7].data<float>();
  float* ds = (*outputs)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* sr = s + r * V;
    float* dr = ds + r * V;
    const float g = dce[r] * inv_t, lse = lses[r], rest = tail[r];
    float mass = rest * static_cast<float>(V - k);
    for (int64_t j = 0; j < k; ++j) mass += probs[r * k + j];
    const float gm = g * mass;
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) dr[j] = gm * FastExp(sr[j] * inv_t - lse) - g * rest;
    for (int64_t j = 0; j < k; ++j) {
      dr[TokenId(ids[r * k + j], V)] -= g * (probs[r * k + j] - rest);
    }
  }
  ZeroOutputsAfterFirst(outputs);
  return kOk;
}

MXReturnValue SparseSoftCEAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 4;
  *num_out = 2;
  return kOk;
}

MXReturnValue SparseSoftCEShape(const Attrs& attrs, Shapes* in_shapes, Shapes* out_shapes) {
  const std::vector<unsigned int>& s = (*in_shapes)[0];
  const std::vector<unsigned int>& ids = (*in_shapes)[1];
  const float temperature = FloatAttr(attrs, "temperature", 1.f);
  if (s.size() != 2 || ids.size() != 2 || ids[0] != s[0] || (*in_shapes)[2] != ids ||
      (*in_shapes)[3] != std::vector<unsigned int>{s[0]} || !(temperature > 0.f)) {
    MX_ERROR_MSG << "bort_sparse_soft_ce: s (rows, V), ids and probs (rows, k), tail (rows,), "
                 << "temperature > 0";
    return kFail;
  }
  (*out_shapes)[0] = {s[0]};
  (*out_shapes)[1] = {s[0]};
  return kOk;
}

}  // namespace

REGISTER_OP(bort_layer_norm)
    .setForward(LayerNormForward, "cpu")
    .setBackward(LayerNormBackward, "cpu")
    .setParseAttrs(LayerNormAttrs)
    .setInferType(AllFloat32)
    .setInferShape(LayerNormShape);

REGISTER_OP(bort_dropout)
    .setForward(DropoutForward, "cpu")
    .setBackward(DropoutBackward, "cpu")
    .setParseAttrs(DropoutAttrs)
    .setInferType(DropoutType)
    .setInferShape(DropoutShape);

REGISTER_OP(bort_self_attention)
    .setForward(SelfAttentionForward, "cpu")
    .setBackward(SelfAttentionBackward, "cpu")
    .setParseAttrs(SelfAttentionAttrs)
    .setInferType(SelfAttentionType)
    .setInferShape(SelfAttentionShape);

REGISTER_OP(bort_sum_squares)
    .setForward(SumSquaresForward, "cpu")
    .setParseAttrs(SumSquaresAttrs)
    .setInferType(AllFloat32)
    .setInferShape(SumSquaresShape);

REGISTER_OP(bort_adamw)
    .setForward(AdamWForward, "cpu")
    .setParseAttrs(AdamWAttrs)
    .setInferType(AllFloat32)
    .setInferShape(AdamWShape)
    .setMutateInputs(AdamWMutate);

REGISTER_OP(bort_vocab_loss)
    .setForward(VocabLossForward, "cpu")
    .setBackward(VocabLossBackward, "cpu")
    .setParseAttrs(VocabLossAttrs)
    .setInferType(AllFloat32)
    .setInferShape(VocabLossShape);

REGISTER_OP(bort_sparse_soft_ce)
    .setForward(SparseSoftCEForward, "cpu")
    .setBackward(SparseSoftCEBackward, "cpu")
    .setParseAttrs(SparseSoftCEAttrs)
    .setInferType(AllFloat32)
    .setInferShape(SparseSoftCEShape);

MXReturnValue initialize(int version) {
  // The custom-operator API of MXNet 1.9 (library version 11).
  return version >= 10900 ? MXReturnValue::MX_SUCCESS : MXReturnValue::MX_FAIL;
}
