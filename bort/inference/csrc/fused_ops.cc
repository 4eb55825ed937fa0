// Fused CPU operators for Bort's inference graphs, loaded into MXNet with mx.library.load.
//
// bort_add_layer_norm(x, residual, gamma, beta; eps, pad):
//   out[i, :H] = LayerNorm(x[i, :] + residual[i / k, :H]) * gamma + beta,   out[i, H:H+pad] = 0
// with rows i counted over every axis but the last. x: (..., H); residual: (..., H_r) with
// H_r >= H (a zero-padded residual stream is read through its first H channels) and a row
// count that divides x's, k = rows(x) / rows(residual) (k = 1: a residual of x's shape; the
// position embeddings (L, H) against tokens laid out (L, B, H): k = B); gamma, beta: (H,);
// out: x's shape with H + pad channels.
//
// bort_masked_softmax(scores, valid_length; heads):
//   out[n, q, j] = softmax over j < len of scores[n, q, :len], 0 for j >= len,
//   len = valid_length[n / heads]
// scores: (B * heads, L_q, L_k); valid_length: (B,) float. A row whose len is 0 gets 1 / L_k
// everywhere, as adding the -1e9 mask to every key would. It replaces the additive mask's
// broadcast_add + softmax of the padded graph.
//
// bort_add_layer_norm replaces MXNet 1.9's elemwise_add + LayerNorm (+ the concat that widens a dense layer's
// input, see bort/fast.py): one pass over each row while it is in L1, statistics in float32
// with the mean subtracted before squaring, as MXNet's kernel does. Inference only.
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {

int IntAttr(const Attrs& attrs, const char* key, int fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stoi(it->second);
}

float FloatAttr(const Attrs& attrs, const char* key, float fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stof(it->second);
}

MXReturnValue AddLayerNormForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                  std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& x = (*inputs)[0];
  MXTensor& residual = (*inputs)[1];
  const float* gamma = (*inputs)[2].data<float>();
  const float* beta = (*inputs)[3].data<float>();
  MXTensor& out = (*outputs)[0];
  const int64_t width = x.shape.back();
  const int64_t res_width = residual.shape.back();
  const int64_t out_width = out.shape.back();
  const int64_t rows = x.size() / width;
  const int64_t repeat = rows / (residual.size() / res_width);
  const float eps = FloatAttr(attrs, "eps", 1e-5f);
  const float* xs = x.data<float>();
  const float* rs = residual.data<float>();
  float* os = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = xs + i * width;
    const float* ri = rs + (i / repeat) * res_width;
    float* oi = os + i * out_width;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < width; ++j) {
      const float v = xi[j] + ri[j];
      oi[j] = v;
      sum += v;
    }
    const float mean = sum / static_cast<float>(width);
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < width; ++j) {
      const float d = oi[j] - mean;
      sq += d * d;
    }
    const float scale = 1.f / std::sqrt(sq / static_cast<float>(width) + eps);
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) oi[j] = (oi[j] - mean) * scale * gamma[j] + beta[j];
    for (int64_t j = width; j < out_width; ++j) oi[j] = 0.f;
  }
  return MXReturnValue::MX_SUCCESS;
}

// Registered so that MXNet can build the (unused) backward graph of a hybridized block.
MXReturnValue AddLayerNormBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  MX_ERROR_MSG << "bort_add_layer_norm is inference only (bort.inference.fast); train with bort.model";
  return MXReturnValue::MX_FAIL;
}

MXReturnValue AddLayerNormAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 4;
  *num_out = 1;
  return MXReturnValue::MX_SUCCESS;
}

MXReturnValue AddLayerNormType(const Attrs& attrs, std::vector<int>* in_types,
                               std::vector<int>* out_types) {
  for (int type : *in_types) {
    if (type != mxnet::ext::kFloat32) return MXReturnValue::MX_FAIL;
  }
  (*out_types)[0] = mxnet::ext::kFloat32;
  return MXReturnValue::MX_SUCCESS;
}

MXReturnValue AddLayerNormShape(const Attrs& attrs,
                                std::vector<std::vector<unsigned int>>* in_shapes,
                                std::vector<std::vector<unsigned int>>* out_shapes) {
  std::vector<unsigned int> shape = (*in_shapes)[0];
  const std::vector<unsigned int>& residual = (*in_shapes)[1];
  if (shape.empty() || residual.empty() || residual.back() < shape.back()) {
    MX_ERROR_MSG << "bort_add_layer_norm: residual must be at least as wide as x";
    return MXReturnValue::MX_FAIL;
  }
  uint64_t rows = 1, res_rows = 1;
  for (size_t k = 0; k + 1 < shape.size(); ++k) rows *= shape[k];
  for (size_t k = 0; k + 1 < residual.size(); ++k) res_rows *= residual[k];
  if (res_rows == 0 || rows % res_rows != 0) {
    MX_ERROR_MSG << "bort_add_layer_norm: residual rows must divide x's rows";
    return MXReturnValue::MX_FAIL;
  }
  for (int p = 2; p < 4; ++p) {
    const std::vector<unsigned int>& vec = (*in_shapes)[p];
    if (vec.size() != 1 || vec[0] != shape.back()) return MXReturnValue::MX_FAIL;
  }
  const int pad = IntAttr(attrs, "pad", 0);
  if (pad < 0) return MXReturnValue::MX_FAIL;
  shape.back() += static_cast<unsigned int>(pad);
  (*out_shapes)[0] = shape;
  return MXReturnValue::MX_SUCCESS;
}

// exp(x) for float32 by range reduction (x = k ln2 + r, |r| <= ln2 / 2) and a degree-6
// polynomial: relative error ~2e-7, and unlike std::exp it vectorizes without -ffast-math.
inline float VectorExp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float k = std::floor(x * 1.44269504f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.3888889e-3f;
  p = p * r + 8.3333333e-3f;
  p = p * r + 4.1666667e-2f;
  p = p * r + 1.6666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = (static_cast<int32_t>(k) + 127) << 23;
  return p * scale.f;
}

// One row: softmax over its first `len` keys, zeros beyond; len >= 1. Full-length loops with
// the padded keys selected away, and the key count a compile-time constant for the bucket
// lengths bort.inference.fast pads to (kKeys = 0: any count): rows are a few vectors long, and GCC's
// remainder handling for a run-time trip count made them 3.5x slower.
template <int kKeys>
void MaskedSoftmaxRow(const float* si, float* oi, int64_t run_keys, int64_t len) {
  const int64_t keys = kKeys ? kKeys : run_keys;
  float top = -3.0e38f;
#pragma omp simd reduction(max : top)
  for (int64_t j = 0; j < keys; ++j) {
    const float v = j < len ? si[j] : -3.0e38f;
    top = v > top ? v : top;
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < keys; ++j) {
    const float e = j < len ? VectorExp(si[j] - top) : 0.f;
    oi[j] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int64_t j = 0; j < keys; ++j) oi[j] *= inv;
}

using RowKernel = void (*)(const float*, float*, int64_t, int64_t);

RowKernel PickRowKernel(int64_t keys) {
  switch (keys) {
    case 16: return MaskedSoftmaxRow<16>;
    case 32: return MaskedSoftmaxRow<32>;
    case 48: return MaskedSoftmaxRow<48>;
    case 64: return MaskedSoftmaxRow<64>;
    case 96: return MaskedSoftmaxRow<96>;
    case 128: return MaskedSoftmaxRow<128>;
    case 192: return MaskedSoftmaxRow<192>;
    case 256: return MaskedSoftmaxRow<256>;
    case 384: return MaskedSoftmaxRow<384>;
    case 512: return MaskedSoftmaxRow<512>;
    default: return MaskedSoftmaxRow<0>;
  }
}

MXReturnValue MaskedSoftmaxForward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                   std::vector<MXTensor>* outputs, const OpResource& res) {
  MXTensor& scores = (*inputs)[0];
  const float* valid = (*inputs)[1].data<float>();
  MXTensor& out = (*outputs)[0];
  const int64_t keys = scores.shape[2];
  const int64_t queries = scores.shape[1];
  const int64_t rows = scores.shape[0] * queries;
  const int64_t per_item = IntAttr(attrs, "heads", 1) * queries;
  const RowKernel row_kernel = PickRowKernel(keys);
  const float* ss = scores.data<float>();
  float* os = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    float* oi = os + i * keys;
    int64_t len = static_cast<int64_t>(valid[i / per_item] + 0.5f);
    len = len > keys ? keys : len;
    if (len <= 0) {
      for (int64_t j = 0; j < keys; ++j) oi[j] = 1.f / static_cast<float>(keys);
    } else {
      row_kernel(ss + i * keys, oi, keys, len);
    }
  }
  return MXReturnValue::MX_SUCCESS;
}

MXReturnValue MaskedSoftmaxBackward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                                    std::vector<MXTensor>* outputs, const OpResource& res) {
  MX_ERROR_MSG << "bort_masked_softmax is inference only (bort.inference.fast); train with bort.model";
  return MXReturnValue::MX_FAIL;
}

MXReturnValue MaskedSoftmaxAttrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MXReturnValue::MX_SUCCESS;
}

MXReturnValue MaskedSoftmaxShape(const Attrs& attrs,
                                 std::vector<std::vector<unsigned int>>* in_shapes,
                                 std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& scores = (*in_shapes)[0];
  const std::vector<unsigned int>& valid = (*in_shapes)[1];
  const int heads = IntAttr(attrs, "heads", 1);
  if (scores.size() != 3 || valid.size() != 1 || heads < 1 ||
      scores[0] != valid[0] * static_cast<unsigned int>(heads)) {
    MX_ERROR_MSG << "bort_masked_softmax: scores must be (B * heads, L_q, L_k) and "
                 << "valid_length (B,)";
    return MXReturnValue::MX_FAIL;
  }
  (*out_shapes)[0] = scores;
  return MXReturnValue::MX_SUCCESS;
}

}  // namespace

REGISTER_OP(bort_masked_softmax)
    .setForward(MaskedSoftmaxForward, "cpu")
    .setBackward(MaskedSoftmaxBackward, "cpu")
    .setParseAttrs(MaskedSoftmaxAttrs)
    .setInferType(AddLayerNormType)
    .setInferShape(MaskedSoftmaxShape);

REGISTER_OP(bort_add_layer_norm)
    .setForward(AddLayerNormForward, "cpu")
    .setBackward(AddLayerNormBackward, "cpu")
    .setParseAttrs(AddLayerNormAttrs)
    .setInferType(AddLayerNormType)
    .setInferShape(AddLayerNormShape);

MXReturnValue initialize(int version) {
  // The custom-operator API of MXNet 1.9 (library version 11).
  return version >= 10900 ? MXReturnValue::MX_SUCCESS : MXReturnValue::MX_FAIL;
}
