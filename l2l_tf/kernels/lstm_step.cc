// One step of the coordinatewise LSTM optimizer, fused into one CPU kernel.
//
// L2lLstmStep computes, for every coordinate i of a flat gradient [n], what
// CoordinatewiseLSTM.step computes with TensorFlow ops (l2l_tf/networks.py):
//
//   x_i     = preprocess(g_i)            log/sign (width 2) or the raw g (1)
//   gates   = [x_i, h_{l,i}] W_l + b_l   four column blocks i, f, g, o
//   c_{l,i} = sigmoid(f) c_{l,i} + sigmoid(i) tanh(g)
//   h_{l,i} = sigmoid(o) tanh(c_{l,i})   the next layer's input
//   u_i     = scale (h_{L,i} . w_out + b_out)
//
// TensorFlow runs that as about twenty ops, each a pass over [n, h] through
// memory; here each group of coordinates goes through the whole network while
// its state is in registers and L1, and the weights (about 20 KB) stay in L1.
// The matmuls are vectorized over the 4h gate columns (16-float vectors) and
// blocked over up to four coordinates, so each weight row loaded serves four
// coordinates; the gates' sigmoids and tanhs are vectorized over the
// coordinates' units. tanh(z) is computed as 2 sigmoid(2z) - 1.
//
// The state is float32 or bfloat16 (rounded to nearest even, as tf.cast);
// the network computes in float32 either way.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace l2l_tf {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::OpInputList;
using ::tensorflow::OpOutputList;
using ::tensorflow::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::bfloat16;
using ::tensorflow::errors::InvalidArgument;
namespace shape_inference = ::tensorflow::shape_inference;

constexpr int kLanes = 16;   // Floats in one vector.
constexpr int kGroup = 4;    // Coordinates that go through the network together.
constexpr int kMaxVectors = 12;  // 4h <= 192: hidden sizes up to 48.

typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef float uvec __attribute__((vector_size(kLanes * sizeof(float)),
                                  aligned(4)));

// ---------------------------------------------------------------------------
// Element-wise math, written so that GCC vectorizes the loops that call it.

// e^x for x in [-87.3, 88.3] (clamped), Cephes's expf: about 1 ulp.
static inline float Exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  float n = __builtin_rintf(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

static inline float Sigmoid(float x) { return 1.0f / (1.0f + Exp(-x)); }

#if defined(__AVX512F__)
// The lanes of a vector starting `remaining` floats before the end.
static inline __mmask16 TailMask(int remaining) {
  return remaining >= kLanes
             ? static_cast<__mmask16>(0xffff)
             : static_cast<__mmask16>((1u << remaining) - 1);
}
#endif

// Copies a few floats: inline vector moves (a call to memcpy costs more
// than the copy at these sizes, 20 to 80 floats).
static inline void CopyFloats(float* dst, const float* src, int count) {
#if defined(__AVX512F__)
  int m = 0;
  for (; m + kLanes <= count; m += kLanes)
    _mm512_storeu_ps(dst + m, _mm512_loadu_ps(src + m));
  if (m < count) {
    const __mmask16 k = TailMask(count - m);
    _mm512_mask_storeu_ps(dst + m, k, _mm512_maskz_loadu_ps(k, src + m));
  }
#else
  for (int m = 0; m < count; ++m) dst[m] = src[m];
#endif
}

// Asks for the cache lines of [p, p + bytes) ahead of their use, into L2
// (L1 holds the weights). The kernels stream through their inputs, group
// by group, and the hardware prefetcher falls behind on that many streams:
// prefetching kAhead groups on made the gradient 1.3x faster.
constexpr int64_t kAhead = 8;
static inline void Prefetch(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64)
    __builtin_prefetch(c + off, 0, 2);
}

static inline float Dot(const float* a, const float* b, int count) {
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (int m = 0; m < count; m += kLanes) {
    const __mmask16 k = TailMask(count - m);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + m),
                          _mm512_maskz_loadu_ps(k, b + m), acc);
  }
  return _mm512_reduce_add_ps(acc);
#else
  float dot = 0.0f;
  for (int m = 0; m < count; ++m) dot += a[m] * b[m];
  return dot;
#endif
}

// State in and out: float32 copies, bfloat16 conversions.
static inline void LoadState(float* dst, const float* src, int count) {
  CopyFloats(dst, src, count);
}
static inline void StoreState(float* dst, const float* src, int count) {
#if defined(__AVX512F__)
  // Whole aligned vectors bypass the cache: the new state is not read again
  // in this step, and streaming saves reading each line before writing it.
  if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0 && count % kLanes == 0) {
    for (int m = 0; m < count; m += kLanes)
      _mm512_stream_ps(dst + m, _mm512_loadu_ps(src + m));
    return;
  }
#endif
  CopyFloats(dst, src, count);
}

static inline float ToFloat(float x) { return x; }
static inline float ToFloat(bfloat16 x) {
  uint16_t half;
  std::memcpy(&half, &x, sizeof(half));
  uint32_t bits = static_cast<uint32_t>(half) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T> static inline T FromFloat(float x);
template <> inline float FromFloat<float>(float x) { return x; }
template <> inline bfloat16 FromFloat<bfloat16>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  uint16_t half;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    half = static_cast<uint16_t>((bits >> 16) | 0x40u);  // A quiet NaN.
  } else {  // Round to nearest even, as Eigen's bfloat16 (and tf.cast).
    half = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
  bfloat16 out;
  std::memcpy(&out, &half, sizeof(half));
  return out;
}

// The LSTM cell on m units laid out by gate (gi, gf, gg, go: the
// pre-activations, the g block doubled): c = sigmoid(f) c + sigmoid(i)
// tanh(g); h = sigmoid(o) tanh(c), tanh(z) = 2 sigmoid(2z) - 1. With `act`,
// also writes the activations the backward pass needs, by quantity (i, f,
// g, o, tanh c; each `stride` floats apart).
static inline void CellGeneric(const float* gi, const float* gf,
                               const float* gg, const float* go, float* cs,
                               float* hs, int m_end, float* act, int stride) {
#pragma omp simd
  for (int m = 0; m < m_end; ++m) {
    const float i = Sigmoid(gi[m]), f = Sigmoid(gf[m]);
    const float g = 2.0f * Sigmoid(gg[m]) - 1.0f, o = Sigmoid(go[m]);
    const float cell = f * cs[m] + i * g;
    const float tanh_c = 2.0f * Sigmoid(2.0f * cell) - 1.0f;
    cs[m] = cell;
    hs[m] = o * tanh_c;
    if (act) {
      act[m] = i;
      act[stride + m] = f;
      act[2 * stride + m] = g;
      act[3 * stride + m] = o;
      act[4 * stride + m] = tanh_c;
    }
  }
}

#if defined(__AVX512F__)
// sigmoid(x) = 1 / (1 + 2^(-x log2 e)), the power of two by vscalefps
// (which saturates to 0 and inf: no clamping) and Cephes's expf polynomial
// on the reduced argument.
static inline __m512 SigmoidAvx512(__m512 x) {
  const __m512 minus_x = _mm512_sub_ps(_mm512_setzero_ps(), x);
  const __m512 n = _mm512_roundscale_ps(
      _mm512_mul_ps(minus_x, _mm512_set1_ps(1.44269504088896341f)),
      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), minus_x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r,
                      _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, _mm512_scalef_ps(y, n)));
}

// The saved activations are read back only by the gradient, after the
// whole unroll: whole aligned vectors bypass the cache.
static inline void StoreAct(float* dst, __mmask16 k, __m512 v) {
  if (k == 0xffff && (reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
    _mm512_stream_ps(dst, v);
  } else {
    _mm512_mask_storeu_ps(dst, k, v);
  }
}

static inline void Cell(const float* gi, const float* gf, const float* gg,
                        const float* go, float* cs, float* hs, int m_end,
                        float* act, int stride) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  for (int m = 0; m < m_end; m += kLanes) {
    const __mmask16 k = TailMask(m_end - m);
    const __m512 i = SigmoidAvx512(_mm512_maskz_loadu_ps(k, gi + m));
    const __m512 f = SigmoidAvx512(_mm512_maskz_loadu_ps(k, gf + m));
    const __m512 g = _mm512_fmsub_ps(
        two, SigmoidAvx512(_mm512_maskz_loadu_ps(k, gg + m)), one);
    const __m512 o = SigmoidAvx512(_mm512_maskz_loadu_ps(k, go + m));
    const __m512 cell = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(k, cs + m),
                                        _mm512_mul_ps(i, g));
    const __m512 tanh_c = _mm512_fmsub_ps(
        two, SigmoidAvx512(_mm512_mul_ps(two, cell)), one);
    _mm512_mask_storeu_ps(cs + m, k, cell);
    _mm512_mask_storeu_ps(hs + m, k, _mm512_mul_ps(o, tanh_c));
    if (act) {
      StoreAct(act + m, k, i);
      StoreAct(act + stride + m, k, f);
      StoreAct(act + 2 * stride + m, k, g);
      StoreAct(act + 3 * stride + m, k, o);
      StoreAct(act + 4 * stride + m, k, tanh_c);
    }
  }
}
#else
static inline void Cell(const float* gi, const float* gf, const float* gg,
                        const float* go, float* cs, float* hs, int m_end,
                        float* act, int stride) {
  CellGeneric(gi, gf, gg, go, cs, hs, m_end, act, stride);
}
#endif

static inline void LoadState(float* dst, const bfloat16* src, int count) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  // bfloat16 -> float32: its 16 bits become the high half.
  for (int m = 0; m < count; m += kLanes) {
    const __mmask16 k = TailMask(count - m);
    const __m512i bits = _mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, src + m)), 16);
    _mm512_mask_storeu_ps(dst + m, k, _mm512_castsi512_ps(bits));
  }
#else
  for (int m = 0; m < count; ++m) dst[m] = ToFloat(src[m]);
#endif
}
static inline void StoreState(bfloat16* dst, const float* src, int count) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  // vcvtneps2bf16 rounds to nearest even, as tf.cast (denormals flush to 0).
  for (int m = 0; m < count; m += kLanes) {
    const __mmask16 k = TailMask(count - m);
    const __m256bh half = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(k, src + m));
    _mm256_mask_storeu_epi16(dst + m, k, reinterpret_cast<const __m256i&>(half));
  }
#else
  for (int m = 0; m < count; ++m) dst[m] = FromFloat<bfloat16>(src[m]);
#endif
}

// ---------------------------------------------------------------------------
// One layer's weights, laid out for the kernel: row k of `w` holds the 4h
// gate columns of input k, padded with zeros to a whole number of vectors;
// the g block (and its bias) is doubled, since tanh(z) = 2 sigmoid(2z) - 1.

struct Layer {
  int in = 0;       // Inputs: the layer's input width plus h.
  int h = 0;        // Units.
  int vectors = 0;  // Vectors in a padded row (ceil(4h / 16)).
  std::vector<float, Eigen::aligned_allocator<float>> w;     // [in, vectors*16]
  std::vector<float, Eigen::aligned_allocator<float>> bias;  // [vectors*16]
};

// out[p, :] = bias + in[p, :rows] w for P coordinates, w [rows, V*16]
// (bias null: 0), the rows of `in` `stride` floats apart, of `out` V*16:
// the forward pass's gate pre-activations, and the gradient's dz W^T.
template <int V, int P>
static inline void RowsTimesWeights(const float* weights, int rows,
                                    const float* bias, const float* in,
                                    int stride, float* out) {
  vec acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v)
      acc[p][v] = bias ? reinterpret_cast<const vec*>(bias)[v] : vec{};
  const vec* w = reinterpret_cast<const vec*>(weights);
  for (int k = 0; k < rows; ++k, w += V) {
    vec row[V];
    for (int v = 0; v < V; ++v) {
      row[v] = w[v];
#if defined(__AVX512F__)
      // Kept in registers, not reloaded as a memory operand of each FMA:
      // the loads of a row then serve P coordinates (measured 9% faster).
      __asm__("" : "+v"(row[v]));
#endif
    }
    for (int p = 0; p < P; ++p) {
      const float s = in[p * stride + k];
      for (int v = 0; v < V; ++v) acc[p][v] += s * row[v];
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v)
      *reinterpret_cast<uvec*>(out + (p * V + v) * kLanes) = acc[p][v];
}

template <int V>
static inline void GroupTimesWeights(const float* weights, int rows,
                                     const float* bias, const float* in,
                                     int stride, float* out) {
  // Up to 24 accumulators: four coordinates a pass while a padded row has at
  // most 5 vectors (h <= 20), two up to 10 (h <= 40), then one.
  constexpr int P = V <= 5 ? 4 : (V <= 10 ? 2 : 1);
  for (int p = 0; p < kGroup; p += P)
    RowsTimesWeights<V, P>(weights, rows, bias, in + p * stride, stride,
                           out + p * V * kLanes);
}

typedef void (*MatmulFn)(const float*, int, const float*, const float*, int,
                         float*);

// GroupTimesWeights for rows of `vectors` vectors.
static MatmulFn MatmulFor(int vectors) {
  static const MatmulFn fns[kMaxVectors] = {
      GroupTimesWeights<1>,  GroupTimesWeights<2>,  GroupTimesWeights<3>,
      GroupTimesWeights<4>,  GroupTimesWeights<5>,  GroupTimesWeights<6>,
      GroupTimesWeights<7>,  GroupTimesWeights<8>,  GroupTimesWeights<9>,
      GroupTimesWeights<10>, GroupTimesWeights<11>, GroupTimesWeights<12>};
  return fns[vectors - 1];
}

// ---------------------------------------------------------------------------

// The network's attributes, as both ops read them, and its preprocessing.
struct Network {
  bool log_sign = true;
  bool bfloat16_state = false;
  float p = 10.0f;
  float output_scale = 0.1f;
  int num_layers = 2;
  // As the TF path's constants: math.exp in double, then float32.
  float threshold = 0.0f;  // e^-p
  float e_p = 1.0f;        // e^p

  void Read(OpKernelConstruction* ctx) {
    std::string preprocess;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("preprocess", &preprocess));
    log_sign = preprocess == "log_sign";
    OP_REQUIRES_OK(ctx, ctx->GetAttr("p", &p));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_scale", &output_scale));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_layers", &num_layers));
    int num_state;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_state", &num_state));
    OP_REQUIRES(ctx, num_state == 2 * num_layers,
                InvalidArgument("num_state must be 2 * num_layers (h and c "
                                "of each layer); got ", num_state, " and ",
                                num_layers));
    ::tensorflow::DataType dtype;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("S", &dtype));
    bfloat16_state = dtype == ::tensorflow::DT_BFLOAT16;
    threshold = static_cast<float>(std::exp(-double{p}));
    e_p = static_cast<float>(std::exp(double{p}));
  }

  // Writes the preprocessed gradients of `count` coordinates into the first
  // columns of `in` (rows of `stride`); returns the feature width.
  int Features(const float* g, int count, float* in, int stride) const {
    if (!log_sign) {
      for (int k = 0; k < count; ++k) in[k * stride] = g[k];
      return 1;
    }
    for (int k = 0; k < count; ++k) {
      const float a = std::fabs(g[k]);
      if (a >= threshold) {
        in[k * stride] = std::log(a) / p;
        in[k * stride + 1] = g[k] > 0.0f ? 1.0f : (g[k] < 0.0f ? -1.0f : 0.0f);
      } else {
        in[k * stride] = -1.0f;
        in[k * stride + 1] = g[k] * e_p;
      }
    }
    return 2;
  }

  // d grad from the features' gradients: log|g| / p has derivative
  // 1 / (g p), sign(g) 0; below the threshold, -1 has 0 and e^p g has e^p.
  float FeatureGradient(float g, const float* d_features) const {
    if (!log_sign) return d_features[0];
    if (std::fabs(g) >= threshold) return d_features[0] / (g * p);
    return d_features[1] * e_p;
  }
};

// The saved activations of a step (L2lLstmStep with save, read by its
// gradient) are [SavedRows(n), sum over layers of 5h] floats, by group of
// kGroup coordinates as the kernels use them: the group starting at
// coordinate s holds, from saved[s, 0] on, for each layer l, for each of i,
// f, g, o and tanh c, the kGroup coordinates' h values (a short last group
// leaves the rest unwritten).
static inline int64_t SavedRows(int64_t n) {
  return (n + kGroup - 1) / kGroup * kGroup;
}

class LstmStepOp : public OpKernel {
 public:
  explicit LstmStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    net_.Read(ctx);
    if (ctx->HasAttr("save")) OP_REQUIRES_OK(ctx, ctx->GetAttr("save", &save_));
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<Tensor> state;
    OpInputList inputs;
    OP_REQUIRES_OK(ctx, ctx->input_list("state", &inputs));
    for (int s = 0; s < inputs.size(); ++s) state.push_back(inputs[s]);
    Prepared prepared;
    OP_REQUIRES_OK(ctx, Prepare(ctx, state, &prepared));
    OpOutputList new_state;
    OP_REQUIRES_OK(ctx, ctx->output_list("new_state", &new_state));
    std::vector<void*> out;
    for (int s = 0; s < 2 * net_.num_layers; ++s) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, new_state.allocate(s, state[s].shape(), &t));
      out.push_back(t->data());
    }
    // With `save`, the activations of the backward pass (see SavedRows);
    // else an empty [0, width].
    Tensor* saved = nullptr;
    int64_t width = 0;
    for (const Layer& layer : prepared.layers) width += 5 * layer.h;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            "saved",
                            TensorShape({save_ ? SavedRows(prepared.n) : 0,
                                         width}),
                            &saved));
    if (save_) prepared.saved = saved->flat<float>().data();
    Step(ctx, state, out, &prepared);
  }

 protected:
  // What Prepare makes of the inputs other than the state.
  struct Prepared {
    int64_t n = 0;
    std::vector<Layer> layers;
    std::vector<float> w_out;
    float b_out = 0.0f;
    Tensor* updates = nullptr;
    float* saved = nullptr;  // See SavedRows.
  };

  // Checks every input's shape (the state's too), lays the weights out and
  // allocates the updates: before any work, so that bad input changes
  // nothing.
  Status Prepare(OpKernelContext* ctx, const std::vector<Tensor>& state,
                 Prepared* prepared) const {
    const Tensor& grads = ctx->input(0);
    if (grads.dims() != 1)
      return InvalidArgument("grads must be [n]; got shape ",
                             grads.shape().DebugString());
    const int64_t n = grads.dim_size(0);
    OpInputList kernels, biases;
    TF_RETURN_IF_ERROR(ctx->input_list("kernels", &kernels));
    TF_RETURN_IF_ERROR(ctx->input_list("biases", &biases));
    const Tensor& out_kernel = ctx->input(ctx->num_inputs() - 2);
    const Tensor& out_bias = ctx->input(ctx->num_inputs() - 1);
    prepared->n = n;
    prepared->layers.resize(net_.num_layers);
    int width = net_.log_sign ? 2 : 1;
    for (int l = 0; l < net_.num_layers; ++l) {
      const Tensor& k = kernels[l];
      if (!(k.dims() == 2 && k.dim_size(1) % 4 == 0 &&
            k.dim_size(0) == width + k.dim_size(1) / 4))
        return InvalidArgument("kernels[", l, "] must be [", width,
                               " + h, 4h]; got shape ",
                               k.shape().DebugString());
      const int h = static_cast<int>(k.dim_size(1) / 4);
      if (4 * h > kMaxVectors * kLanes)
        return InvalidArgument("hidden sizes up to ", kMaxVectors * kLanes / 4,
                               " are fused; got ", h);
      if (!(biases[l].dims() == 1 && biases[l].dim_size(0) == 4 * h))
        return InvalidArgument("biases[", l, "] must be [", 4 * h,
                               "]; got shape ",
                               biases[l].shape().DebugString());
      for (int s = 0; s < 2; ++s) {
        const Tensor& t = state[2 * l + s];
        if (!(t.dims() == 2 && t.dim_size(0) == n && t.dim_size(1) == h))
          return InvalidArgument("state[", 2 * l + s, "] must be [", n, ", ",
                                 h, "]; got shape ", t.shape().DebugString());
        if (t.dtype() != (net_.bfloat16_state ? ::tensorflow::DT_BFLOAT16
                                          : ::tensorflow::DT_FLOAT))
          return InvalidArgument("state[", 2 * l + s, "] must be ",
                                 net_.bfloat16_state ? "bfloat16" : "float32",
                                 "; got ",
                                 ::tensorflow::DataTypeString(t.dtype()));
      }
      Layout(k, biases[l], width, h, &prepared->layers[l]);
      width = h;
    }
    if (!(out_kernel.dims() == 2 && out_kernel.dim_size(0) == width &&
          out_kernel.dim_size(1) == 1))
      return InvalidArgument("out_kernel must be [", width, ", 1]; got shape ",
                             out_kernel.shape().DebugString());
    if (out_bias.NumElements() != 1)
      return InvalidArgument("out_bias must hold 1 value; got shape ",
                             out_bias.shape().DebugString());
    // The output scale folded into the output weights, as the TF path does.
    prepared->w_out.resize(width);
    for (int j = 0; j < width; ++j)
      prepared->w_out[j] = net_.output_scale * out_kernel.flat<float>()(j);
    prepared->b_out = net_.output_scale * out_bias.flat<float>()(0);
    return ctx->allocate_output(0, grads.shape(), &prepared->updates);
  }

  // Runs the step from `state` into `out` (which may be the same buffers:
  // each group's rows are read before they are written).
  void Step(OpKernelContext* ctx, const std::vector<Tensor>& state,
            const std::vector<void*>& out, Prepared* prepared) const {
    const int64_t n = prepared->n;
    if (n == 0) return;
    Args args;
    args.n = n;
    args.grads = ctx->input(0).flat<float>().data();
    args.updates = prepared->updates->flat<float>().data();
    args.layers = &prepared->layers;
    args.w_out = prepared->w_out.data();
    args.b_out = prepared->b_out;
    args.saved = prepared->saved;
    for (int s = 0; s < 2 * net_.num_layers; ++s) {
      args.state_in.push_back(state[s].data());
      args.state_out.push_back(out[s]);
    }
    const int64_t groups = (n + kGroup - 1) / kGroup;
    int64_t flops = 0;
    for (const Layer& layer : prepared->layers)
      flops += 2 * layer.in * 4 * layer.h;
    auto work = [&](int64_t begin, int64_t end) {
      if (net_.bfloat16_state) {
        Run<bfloat16>(args, begin * kGroup, std::min(n, end * kGroup));
      } else {
        Run<float>(args, begin * kGroup, std::min(n, end * kGroup));
      }
    };
    const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
    workers.workers->ParallelFor(groups, kGroup * (flops + 200), work);
  }

 protected:
  struct Args {
    int64_t n;
    const float* grads;
    float* updates;
    const std::vector<Layer>* layers;
    const float* w_out;
    float b_out;
    float* saved;
    std::vector<const void*> state_in;
    std::vector<void*> state_out;
  };

  static void Layout(const Tensor& kernel, const Tensor& bias, int width,
                     int h, Layer* layer) {
    layer->in = width + h;
    layer->h = h;
    layer->vectors = (4 * h + kLanes - 1) / kLanes;
    const int row = layer->vectors * kLanes;
    layer->w.assign(static_cast<size_t>(layer->in) * row, 0.0f);
    layer->bias.assign(row, 0.0f);
    auto k = kernel.matrix<float>();
    auto b = bias.flat<float>();
    for (int j = 0; j < 4 * h; ++j) {
      const float scale = (j >= 2 * h && j < 3 * h) ? 2.0f : 1.0f;
      for (int i = 0; i < layer->in; ++i)
        layer->w[static_cast<size_t>(i) * row + j] = scale * k(i, j);
      layer->bias[j] = scale * b(j);
    }
  }

  // Coordinates [begin, end): groups of kGroup through the whole network.
  template <typename S>
  void Run(const Args& args, int64_t begin, int64_t end) const {
    const std::vector<Layer>& layers = *args.layers;
    int max_in = 0, max_h = 0, max_row = 0;
    for (const Layer& layer : layers) {
      max_in = std::max(max_in, layer.in);
      max_h = std::max(max_h, layer.h);
      max_row = std::max(max_row, layer.vectors * kLanes);
    }
    // Per group: the layer's inputs [kGroup, in]; its gate pre-activations
    // [kGroup, row] and the same by gate, [4, kGroup * h]; c; h.
    std::vector<float, Eigen::aligned_allocator<float>> in(kGroup * max_in),
        pre(kGroup * max_row), gates(4 * kGroup * max_h),
        c(kGroup * max_h), hid(kGroup * max_h);
    int saved_width = 0;
    for (const Layer& layer : layers) saved_width += 5 * layer.h;
    for (int64_t start = begin; start < end; start += kGroup) {
      const int count = static_cast<int>(std::min<int64_t>(kGroup,
                                                           end - start));
      const int64_t next = start + kAhead * kGroup;
      if (next < end) {
        const int64_t rows = std::min<int64_t>(kGroup, end - next);
        Prefetch(args.grads + next, rows * sizeof(float));
        for (size_t l = 0; l < layers.size(); ++l)
          for (size_t k = 2 * l; k < 2 * l + 2; ++k)
            Prefetch(static_cast<const S*>(args.state_in[k]) +
                         next * layers[l].h,
                     rows * layers[l].h * sizeof(S));
      }
      int width = net_.Features(args.grads + start, count, in.data(),
                           layers[0].in);
      int saved_offset = 0;
      for (size_t l = 0; l < layers.size(); ++l) {
        const Layer& layer = layers[l];
        const int h = layer.h, row = layer.vectors * kLanes;
        const S* h_prev = static_cast<const S*>(args.state_in[2 * l]) +
                          start * h;
        const S* c_prev = static_cast<const S*>(args.state_in[2 * l + 1]) +
                          start * h;
        // Inputs: [x, h_prev] per coordinate (x is already in place);
        // a short group's missing coordinates get zeros.
        for (int p = 0; p < kGroup; ++p) {
          if (p < count) {
            LoadState(in.data() + p * layer.in + width, h_prev + p * h, h);
          } else {
            std::memset(in.data() + p * layer.in, 0,
                        layer.in * sizeof(float));
          }
        }
        LoadState(c.data(), c_prev, count * h);
        MatmulFor(layer.vectors)(layer.w.data(), layer.in, layer.bias.data(),
                                 in.data(), layer.in, pre.data());
        // By gate: gates[g][p * h + j] = pre[p][g * h + j].
        for (int g = 0; g < 4; ++g)
          for (int p = 0; p < kGroup; ++p)
            CopyFloats(gates.data() + (g * kGroup + p) * h,
                       pre.data() + p * row + g * h, h);
        const int m_end = count * h;
        const float* gi = gates.data();
        const float* gf = gi + kGroup * h;
        const float* gg = gf + kGroup * h;
        const float* go = gg + kGroup * h;
        float* cs = c.data();
        float* hs = hid.data();
        // The activations go straight to their place in `saved`.
        float* a = args.saved ? args.saved + start * saved_width +
                                    kGroup * saved_offset
                              : nullptr;
        Cell(gi, gf, gg, go, cs, hs, m_end, a, kGroup * h);
        saved_offset += 5 * h;
        StoreState(static_cast<S*>(args.state_out[2 * l]) + start * h, hs,
                   m_end);
        StoreState(static_cast<S*>(args.state_out[2 * l + 1]) + start * h,
                   cs, m_end);
        // The next layer's x: this layer's h, unrounded.
        if (l + 1 < layers.size()) {
          const int next_in = layers[l + 1].in;
          for (int p = 0; p < count; ++p)
            CopyFloats(in.data() + p * next_in, hs + p * h, h);
          width = h;
        }
      }
      const int h = layers.back().h;
      for (int p = 0; p < count; ++p) {
        args.updates[start + p] =
            Dot(hid.data() + p * h, args.w_out, h) + args.b_out;
      }
    }
#if defined(__AVX512F__)
    _mm_sfence();  // The streamed state is visible before the op ends.
#endif
  }

  Network net_;
  bool save_ = false;
};

// The same step, written into the state variables themselves: no new state
// buffers (whose first touch costs a page fault a 4 KB page) and half the
// peak state memory. A variable whose buffer is shared (a read of it is
// still alive) gets a new buffer, as TensorFlow's training ops do.
class LstmApplyOp : public LstmStepOp {
 public:
  explicit LstmApplyOp(OpKernelConstruction* ctx) : LstmStepOp(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const int num_state = 2 * net_.num_layers;
    std::vector<::tensorflow::core::RefCountPtr<::tensorflow::Var>> vars(
        num_state);
    for (int s = 0; s < num_state; ++s) {
      OP_REQUIRES_OK(ctx, ::tensorflow::LookupResource(
                              ctx, ::tensorflow::HandleFromInput(ctx, 1 + s),
                              &vars[s]));
    }
    // Locked in input order for the whole step (the optimizer passes a
    // variable's state in one order).
    struct Locks {
      std::vector<::tensorflow::mutex*> held;
      ~Locks() {
        for (auto it = held.rbegin(); it != held.rend(); ++it) (*it)->unlock();
      }
    } locks;
    for (auto& var : vars) {
      var->mu()->lock();
      locks.held.push_back(var->mu());
    }
    std::vector<Tensor> state;
    std::vector<bool> shared(num_state);
    for (int s = 0; s < num_state; ++s) {
      Tensor* t = vars[s]->tensor();
      OP_REQUIRES(ctx, t->IsInitialized(),
                  ::tensorflow::errors::FailedPrecondition(
                      "state[", s, "] is not initialized"));
      shared[s] = vars[s]->copy_on_read_mode.load() || !t->RefCountIsOne();
      state.push_back(*t);
    }
    Prepared prepared;
    OP_REQUIRES_OK(ctx, Prepare(ctx, state, &prepared));
    std::vector<void*> out(num_state);
    std::vector<Tensor> fresh(num_state);
    for (int s = 0; s < num_state; ++s) {
      if (shared[s]) {
        OP_REQUIRES_OK(ctx, ctx->allocate_temp(state[s].dtype(),
                                               state[s].shape(), &fresh[s]));
        out[s] = fresh[s].data();
      } else {
        out[s] = vars[s]->tensor()->data();
      }
    }
    Step(ctx, state, out, &prepared);
    for (int s = 0; s < num_state; ++s)
      if (shared[s]) *vars[s]->tensor() = fresh[s];
  }
};


// ---------------------------------------------------------------------------
// The gradient of L2lLstmStep (with save), for meta-training: given the
// step's inputs, its saved activations and the gradients of its outputs,
// the gradients of its inputs. Per coordinate and layer, from the last:
//
//   dh      = (the next layer's dx, or scale w_out du) + d new h
//   dct     = d new c + dh o (1 - tanh(c)^2)
//   dz      = (dct g i(1-i), dct c_prev f(1-f), dct i (1-g^2),
//              dh tanh(c) o(1-o))          the gates' pre-activations
//   d c_prev = dct f;  [dx, d h_prev] = dz W^T;  dW += [x, h_prev]^T dz
//
// dz W^T is blocked as the forward matmul (each row of W^T serves four
// coordinates); dW and db are summed per chunk of coordinates and the chunks
// added in order, so that the result does not depend on the threads.

// One layer's kernel for the backward pass: row j of `wt` holds column j of
// the kernel (its `in` inputs), padded with zeros to whole vectors.
struct GradLayer {
  int width = 0, h = 0, in = 0;
  int in_vectors = 0;    // ceil(in / 16)
  int gate_vectors = 0;  // ceil(4h / 16)
  std::vector<float, Eigen::aligned_allocator<float>> wt;  // [4h, in_vectors*16]
};

// dw[k, :] += sum_p x[p, k] dz[p, :] and db += sum_p dz[p, :], the kGroup
// coordinates' dz held in registers (rows of dz and dw V*16 long).
template <int V>
static inline void WeightGradientGroup(const GradLayer& layer, const float* x,
                                       const float* dz, float* dw,
                                       float* db) {
  constexpr int P = V <= 5 ? 4 : (V <= 10 ? 2 : 1);
  for (int p0 = 0; p0 < kGroup; p0 += P) {
    vec d[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) {
        d[p][v] = *reinterpret_cast<const vec*>(dz + ((p0 + p) * V + v) *
                                                         kLanes);
#if defined(__AVX512F__)
        __asm__("" : "+v"(d[p][v]));
#endif
      }
    vec* b = reinterpret_cast<vec*>(db);
    for (int v = 0; v < V; ++v) {
      vec sum = b[v];
      for (int p = 0; p < P; ++p) sum += d[p][v];
      b[v] = sum;
    }
    vec* w = reinterpret_cast<vec*>(dw);
    for (int k = 0; k < layer.in; ++k, w += V) {
      for (int v = 0; v < V; ++v) {
        vec sum = w[v];
        for (int p = 0; p < P; ++p) sum += x[(p0 + p) * layer.in + k] * d[p][v];
        w[v] = sum;
      }
    }
  }
}

typedef void (*WeightGradientFn)(const GradLayer&, const float*, const float*,
                                 float*, float*);

static WeightGradientFn WeightGradientFor(int vectors) {
  static const WeightGradientFn fns[kMaxVectors] = {
      WeightGradientGroup<1>,  WeightGradientGroup<2>,
      WeightGradientGroup<3>,  WeightGradientGroup<4>,
      WeightGradientGroup<5>,  WeightGradientGroup<6>,
      WeightGradientGroup<7>,  WeightGradientGroup<8>,
      WeightGradientGroup<9>,  WeightGradientGroup<10>,
      WeightGradientGroup<11>, WeightGradientGroup<12>};
  return fns[vectors - 1];
}

class LstmStepGradOp : public OpKernel {
 public:
  explicit LstmStepGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    net_.Read(ctx);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    OP_REQUIRES(ctx, grads.dims() == 1,
                InvalidArgument("grads must be [n]; got shape ",
                                grads.shape().DebugString()));
    const int64_t n = grads.dim_size(0);
    OpInputList state, kernels, d_new_state;
    OP_REQUIRES_OK(ctx, ctx->input_list("state", &state));
    OP_REQUIRES_OK(ctx, ctx->input_list("kernels", &kernels));
    OP_REQUIRES_OK(ctx, ctx->input_list("d_new_state", &d_new_state));
    const Tensor& saved = ctx->input(SavedIndex());
    const Tensor& out_kernel = ctx->input(SavedIndex() + net_.num_layers + 1);
    const Tensor& d_updates = ctx->input(SavedIndex() + net_.num_layers + 2);
    std::vector<GradLayer> layers(net_.num_layers);
    int width = net_.log_sign ? 2 : 1, saved_width = 0;
    for (int l = 0; l < net_.num_layers; ++l) {
      const Tensor& k = kernels[l];
      OP_REQUIRES(ctx, k.dims() == 2 && k.dim_size(1) % 4 == 0 &&
                           k.dim_size(0) == width + k.dim_size(1) / 4,
                  InvalidArgument("kernels[", l, "] must be [", width,
                                  " + h, 4h]; got shape ",
                                  k.shape().DebugString()));
      const int h = static_cast<int>(k.dim_size(1) / 4);
      OP_REQUIRES(ctx, 4 * h <= kMaxVectors * kLanes &&
                           width + h <= kMaxVectors * kLanes,
                  InvalidArgument("hidden sizes up to ",
                                  kMaxVectors * kLanes / 4,
                                  " are fused; got ", h));
      for (int s = 0; s < 2; ++s) {
        for (const Tensor* t : {&state[2 * l + s], &d_new_state[2 * l + s]}) {
          OP_REQUIRES(ctx, t->dims() == 2 && t->dim_size(0) == n &&
                               t->dim_size(1) == h,
                      InvalidArgument("state[", 2 * l + s, "] and its "
                                      "gradient must be [", n, ", ", h,
                                      "]; got shape ",
                                      t->shape().DebugString()));
        }
      }
      Layout(k, width, h, &layers[l]);
      saved_width += 5 * h;
      width = h;
    }
    OP_REQUIRES(ctx, saved.dims() == 2 && saved.dim_size(0) == SavedRows(n) &&
                         saved.dim_size(1) == saved_width,
                InvalidArgument("saved must be [", SavedRows(n), ", ",
                                saved_width,
                                "] (L2lLstmStep's with save=True); got shape ",
                                saved.shape().DebugString()));
    OP_REQUIRES(ctx, out_kernel.dims() == 2 && out_kernel.dim_size(0) == width &&
                         out_kernel.dim_size(1) == 1,
                InvalidArgument("out_kernel must be [", width,
                                ", 1]; got shape ",
                                out_kernel.shape().DebugString()));
    OP_REQUIRES(ctx, d_updates.dims() == 1 && d_updates.dim_size(0) == n,
                InvalidArgument("d_updates must be [", n, "]; got shape ",
                                d_updates.shape().DebugString()));

    // Outputs: d_grads, d_state, d_kernels, d_biases, d_out_kernel,
    // d_out_bias.
    Tensor* d_grads = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, grads.shape(), &d_grads));
    OpOutputList d_state, d_kernels, d_biases;
    OP_REQUIRES_OK(ctx, ctx->output_list("d_state", &d_state));
    OP_REQUIRES_OK(ctx, ctx->output_list("d_kernels", &d_kernels));
    OP_REQUIRES_OK(ctx, ctx->output_list("d_biases", &d_biases));
    Args args;
    args.n = n;
    args.grads = grads.flat<float>().data();
    args.saved = saved.flat<float>().data();
    args.saved_width = saved_width;
    args.d_updates = d_updates.flat<float>().data();
    args.d_grads = d_grads->flat<float>().data();
    args.layers = &layers;
    args.w_out = out_kernel.flat<float>().data();
    for (int s = 0; s < 2 * net_.num_layers; ++s) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, d_state.allocate(s, state[s].shape(), &t));
      args.state.push_back(state[s].data());
      args.d_new_state.push_back(d_new_state[s].data());
      args.d_state.push_back(t->data());
    }
    // The weight gradients of each chunk of coordinates: [in, gate_vectors
    // * 16] and [gate_vectors * 16] a layer, then sum(du h_L) and sum(du).
    int64_t partial = 0;
    for (const GradLayer& layer : layers)
      partial += (layer.in + 1) * layer.gate_vectors * kLanes;
    partial += width + 1;
    partial = (partial + kLanes - 1) / kLanes * kLanes;  // Aligned chunks.
    const int64_t groups = (n + kGroup - 1) / kGroup;
    const int64_t chunks =
        std::max<int64_t>(1, std::min<int64_t>(64, groups / 256));
    std::vector<float, Eigen::aligned_allocator<float>> partials(
        chunks * partial, 0.0f);
    args.partials = partials.data();
    args.partial = partial;
    if (n > 0) {
      int64_t flops = 0;
      for (const GradLayer& layer : layers) flops += 4 * layer.in * 4 * layer.h;
      auto work = [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t first = u * groups / chunks * kGroup;
          const int64_t last = std::min(n, (u + 1) * groups / chunks * kGroup);
          if (net_.bfloat16_state) {
            Run<bfloat16>(args, first, last, partials.data() + u * partial);
          } else {
            Run<float>(args, first, last, partials.data() + u * partial);
          }
        }
      };
      const auto& workers = *ctx->device()->tensorflow_cpu_worker_threads();
      workers.workers->ParallelFor(chunks, (groups / chunks) * kGroup *
                                               (flops + 200), work);
    }
    // The chunks' sums, in order.
    for (int64_t u = 1; u < chunks; ++u) {
      const float* src = partials.data() + u * partial;
      float* dst = partials.data();
      for (int64_t m = 0; m < partial; ++m) dst[m] += src[m];
    }
    const float* sum = partials.data();
    for (int l = 0; l < net_.num_layers; ++l) {
      const GradLayer& layer = layers[l];
      const int row = layer.gate_vectors * kLanes, h4 = 4 * layer.h;
      Tensor* dk = nullptr;
      Tensor* db = nullptr;
      OP_REQUIRES_OK(ctx, d_kernels.allocate(l, kernels[l].shape(), &dk));
      OP_REQUIRES_OK(ctx, d_biases.allocate(l, TensorShape({h4}), &db));
      auto k = dk->matrix<float>();
      for (int i = 0; i < layer.in; ++i)
        for (int j = 0; j < h4; ++j) k(i, j) = sum[i * row + j];
      sum += layer.in * row;
      for (int j = 0; j < h4; ++j) db->flat<float>()(j) = sum[j];
      sum += row;
    }
    Tensor* d_out_kernel = nullptr;
    Tensor* d_out_bias = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            ctx->num_outputs() - 2, out_kernel.shape(),
                            &d_out_kernel));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(ctx->num_outputs() - 1,
                                             TensorShape({1}), &d_out_bias));
    // (The sums already carry the output scale, with du.)
    for (int j = 0; j < width; ++j) d_out_kernel->flat<float>()(j) = sum[j];
    d_out_bias->flat<float>()(0) = sum[width];
  }

 private:
  int SavedIndex() const { return 1 + 2 * net_.num_layers; }

  struct Args {
    int64_t n;
    const float* grads;
    const float* saved;
    int saved_width;
    const float* d_updates;
    float* d_grads;
    const std::vector<GradLayer>* layers;
    const float* w_out;
    std::vector<const void*> state, d_new_state;
    std::vector<void*> d_state;
    float* partials;
    int64_t partial;
  };

  static void Layout(const Tensor& kernel, int width, int h,
                     GradLayer* layer) {
    layer->width = width;
    layer->h = h;
    layer->in = width + h;
    layer->in_vectors = (layer->in + kLanes - 1) / kLanes;
    layer->gate_vectors = (4 * h + kLanes - 1) / kLanes;
    const int row = layer->in_vectors * kLanes;
    layer->wt.assign(static_cast<size_t>(4 * h) * row, 0.0f);
    auto k = kernel.matrix<float>();
    for (int j = 0; j < 4 * h; ++j)
      for (int i = 0; i < layer->in; ++i)
        layer->wt[static_cast<size_t>(j) * row + i] = k(i, j);
  }

  // Coordinates [begin, end), their weight gradients added into `partial`.
  template <typename S>
  void Run(const Args& args, int64_t begin, int64_t end,
           float* partial) const {
    const std::vector<GradLayer>& layers = *args.layers;
    const int num_layers = static_cast<int>(layers.size());
    int max_in = 0, max_h = 0, max_row = 0, max_in_row = 0;
    for (const GradLayer& layer : layers) {
      max_in = std::max(max_in, layer.in);
      max_h = std::max(max_h, layer.h);
      max_row = std::max(max_row, layer.gate_vectors * kLanes);
      max_in_row = std::max(max_in_row, layer.in_vectors * kLanes);
    }
    const int sw = args.saved_width;
    const int h_last = layers.back().h;
    typedef std::vector<float, Eigen::aligned_allocator<float>> Buffer;
    // Per group: c_prev, dh, dc, a scratch row; dz by coordinate; the
    // layer's inputs [x, h_prev]; dz W^T.
    Buffer c_prev(kGroup * max_h),
        dh(kGroup * max_h), dc(kGroup * max_h), tmp(kGroup * max_h),
        dz(kGroup * max_row, 0.0f),
        x(kGroup * max_in), dx(kGroup * max_in_row);
    std::vector<int> offsets(num_layers);
    for (int l = 0, o = 0; l < num_layers; ++l) {
      offsets[l] = o;
      o += 5 * layers[l].h;
    }
    // In `partial`: each layer's [in, row] and [row] sums, then the output
    // layer's.
    std::vector<float*> layer_sums(num_layers);
    float* out_sums = partial;
    for (int l = 0; l < num_layers; ++l) {
      layer_sums[l] = out_sums;
      out_sums += (layers[l].in + 1) * layers[l].gate_vectors * kLanes;
    }
    for (int64_t start = begin; start < end; start += kGroup) {
      const int count =
          static_cast<int>(std::min<int64_t>(kGroup, end - start));
      // The group's saved activations (by layer and quantity).
      const float* act = args.saved + start * sw;
      const int64_t next = start + kAhead * kGroup;
      if (next < end) {
        const int64_t rows = std::min<int64_t>(kGroup, end - next);
        Prefetch(args.saved + next * sw, rows * sw * sizeof(float));
        for (int l = 0; l < num_layers; ++l) {
          const int64_t bytes = rows * layers[l].h * sizeof(S);
          for (int k = 2 * l; k < 2 * l + 2; ++k) {
            Prefetch(static_cast<const S*>(args.state[k]) + next * layers[l].h,
                     bytes);
            Prefetch(static_cast<const S*>(args.d_new_state[k]) +
                         next * layers[l].h,
                     bytes);
          }
        }
      }
      // The output layer: u = scale (h_L . w_out + b_out).
      {
        const float* a = act + kGroup * offsets[num_layers - 1];
        const float* o = a + 3 * kGroup * h_last;
        const float* tc = a + 4 * kGroup * h_last;
        LoadState(dh.data(),
                  static_cast<const S*>(args.d_new_state[2 * num_layers - 2]) +
                      start * h_last,
                  count * h_last);
        for (int p = 0; p < count; ++p) {
          const float du = args.d_updates[start + p] * net_.output_scale;
          for (int j = 0; j < h_last; ++j) {
            const int m = p * h_last + j;
            dh[m] += du * args.w_out[j];
            out_sums[j] += du * (o[m] * tc[m]);
          }
          out_sums[h_last] += du;
        }
      }
      for (int l = num_layers - 1; l >= 0; --l) {
        const GradLayer& layer = layers[l];
        const int h = layer.h, m_end = count * h, hg = kGroup * h;
        const float* a = act + kGroup * offsets[l];
        const float *ai = a, *af = a + hg, *ag = a + 2 * hg, *ao = a + 3 * hg,
                    *atc = a + 4 * hg;
        LoadState(c_prev.data(),
                  static_cast<const S*>(args.state[2 * l + 1]) + start * h,
                  m_end);
        LoadState(dc.data(),
                  static_cast<const S*>(args.d_new_state[2 * l + 1]) +
                      start * h,
                  m_end);
        float* dcp = tmp.data();
        // dz straight into rows by coordinate, dz[p][q * h + j] (the
        // padding stays zero; a short group's missing coordinates are
        // zeros).
        const int row = layer.gate_vectors * kLanes;
        for (int p = 0; p < kGroup; ++p) {
          if (p >= count) {
            std::memset(dz.data() + p * row, 0, row * sizeof(float));
            continue;
          }
          float* dzp = dz.data() + p * row;
          const int o0 = p * h;
#pragma omp simd
          for (int j = 0; j < h; ++j) {
            const int m = o0 + j;
            const float i = ai[m], f = af[m], g = ag[m], o = ao[m],
                        tc = atc[m], d_h = dh[m];
            const float dct = dc[m] + d_h * o * (1.0f - tc * tc);
            dzp[j] = dct * g * (i * (1.0f - i));
            dzp[h + j] = dct * c_prev[m] * (f * (1.0f - f));
            dzp[2 * h + j] = dct * i * (1.0f - g * g);
            dzp[3 * h + j] = d_h * tc * (o * (1.0f - o));
            dcp[m] = dct * f;
          }
        }
        StoreState(static_cast<S*>(args.d_state[2 * l + 1]) + start * h, dcp,
                   m_end);
        MatmulFor(layer.in_vectors)(layer.wt.data(), 4 * h, nullptr,
                                    dz.data(), row, dx.data());
        const int in_row = layer.in_vectors * kLanes;
        // d h_prev: the state's gradient.
        for (int p = 0; p < count; ++p)
          CopyFloats(tmp.data() + p * h, dx.data() + p * in_row + layer.width,
                     h);
        StoreState(static_cast<S*>(args.d_state[2 * l]) + start * h,
                   tmp.data(), m_end);
        // The layer's inputs [x, h_prev].
        for (int p = 0; p < kGroup; ++p) {
          if (p >= count) {
            std::memset(x.data() + p * layer.in, 0, layer.in * sizeof(float));
            continue;
          }
          LoadState(x.data() + p * layer.in + layer.width,
                    static_cast<const S*>(args.state[2 * l]) +
                        (start + p) * h,
                    h);
        }
        if (l > 0) {
          // x is the layer below's new h, o tanh(c) (unrounded, as the
          // forward pass used it); dx goes to its dh.
          const int hb = layers[l - 1].h, hgb = kGroup * hb;
          const float* below = act + kGroup * offsets[l - 1];
          LoadState(dh.data(),
                    static_cast<const S*>(args.d_new_state[2 * l - 2]) +
                        start * hb,
                    count * hb);
          for (int p = 0; p < count; ++p)
            for (int j = 0; j < hb; ++j) {
              const int m = p * hb + j;
              x[p * layer.in + j] = below[3 * hgb + m] * below[4 * hgb + m];
              dh[m] += dx[p * in_row + j];
            }
        } else {
          net_.Features(args.grads + start, count, x.data(), layer.in);
          for (int p = 0; p < count; ++p)
            args.d_grads[start + p] =
                net_.FeatureGradient(args.grads[start + p], dx.data() + p * in_row);
        }
        float* dw = layer_sums[l];
        WeightGradientFor(layer.gate_vectors)(layer, x.data(), dz.data(), dw,
                                              dw + layer.in * row);
      }
    }
  }

  Network net_;
};

}  // namespace

// The attributes both ops share: the state dtype, the network's shape and
// its preprocessing and output scale.
#define L2L_LSTM_ATTRS                                          \
  .Attr("S: {float, bfloat16}")                                 \
      .Attr("num_state: int >= 2")                              \
      .Attr("num_layers: int >= 1")                             \
      .Attr("preprocess: {'log_sign', 'none'} = 'log_sign'")    \
      .Attr("p: float = 10.0")                                  \
      .Attr("output_scale: float = 0.1")

REGISTER_OP("L2lLstmStep")
    .Input("grads: float")
    .Input("state: num_state * S")
    .Input("kernels: num_layers * float")
    .Input("biases: num_layers * float")
    .Input("out_kernel: float")
    .Input("out_bias: float")
    .Output("updates: float")
    .Output("new_state: num_state * S")
    .Output("saved: float")
    L2L_LSTM_ATTRS
    .Attr("save: bool = false")
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      int num_state;
      TF_RETURN_IF_ERROR(c->GetAttr("num_state", &num_state));
      for (int s = 0; s < num_state; ++s) c->set_output(1 + s, c->input(1 + s));
      c->set_output(1 + num_state, c->UnknownShapeOfRank(2));
      return ::tensorflow::OkStatus();
    })
    .Doc("One step of the coordinatewise LSTM optimizer (l2l_tf); with save, "
         "also the activations its gradient L2lLstmStepGrad needs.");

REGISTER_KERNEL_BUILDER(Name("L2lLstmStep").Device(DEVICE_CPU), LstmStepOp);

REGISTER_OP("L2lLstmApply")
    .Input("grads: float")
    .Input("state: num_state * resource")
    .Input("kernels: num_layers * float")
    .Input("biases: num_layers * float")
    .Input("out_kernel: float")
    .Input("out_bias: float")
    .Output("updates: float")
    L2L_LSTM_ATTRS
    .SetIsStateful()
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::tensorflow::OkStatus();
    })
    .Doc("L2lLstmStep with the state updated in its variables (l2l_tf).");

REGISTER_KERNEL_BUILDER(Name("L2lLstmApply").Device(DEVICE_CPU), LstmApplyOp);


REGISTER_OP("L2lLstmStepGrad")
    .Input("grads: float")
    .Input("state: num_state * S")
    .Input("saved: float")
    .Input("kernels: num_layers * float")
    .Input("out_kernel: float")
    .Input("d_updates: float")
    .Input("d_new_state: num_state * S")
    .Output("d_grads: float")
    .Output("d_state: num_state * S")
    .Output("d_kernels: num_layers * float")
    .Output("d_biases: num_layers * float")
    .Output("d_out_kernel: float")
    .Output("d_out_bias: float")
    L2L_LSTM_ATTRS
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      int num_state, num_layers;
      TF_RETURN_IF_ERROR(c->GetAttr("num_state", &num_state));
      TF_RETURN_IF_ERROR(c->GetAttr("num_layers", &num_layers));
      int out = 0;
      c->set_output(out++, c->input(0));
      for (int s = 0; s < num_state; ++s) c->set_output(out++, c->input(1 + s));
      for (int l = 0; l < num_layers; ++l)
        c->set_output(out++, c->input(2 + num_state + l));
      for (int l = 0; l < num_layers; ++l)
        c->set_output(out++, c->UnknownShapeOfRank(1));
      c->set_output(out++, c->input(2 + num_state + num_layers));
      c->set_output(out++, c->Vector(1));
      return ::tensorflow::OkStatus();
    })
    .Doc("The gradient of L2lLstmStep (l2l_tf).");

REGISTER_KERNEL_BUILDER(Name("L2lLstmStepGrad").Device(DEVICE_CPU),
                        LstmStepGradOp);

}  // namespace l2l_tf
