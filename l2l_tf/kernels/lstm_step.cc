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
// tanh(g); h = sigmoid(o) tanh(c), tanh(z) = 2 sigmoid(2z) - 1.
static inline void CellGeneric(const float* gi, const float* gf,
                               const float* gg, const float* go, float* cs,
                               float* hs, int m_end) {
#pragma omp simd
  for (int m = 0; m < m_end; ++m) {
    const float cell = Sigmoid(gf[m]) * cs[m] +
                       Sigmoid(gi[m]) * (2.0f * Sigmoid(gg[m]) - 1.0f);
    cs[m] = cell;
    hs[m] = Sigmoid(go[m]) * (2.0f * Sigmoid(2.0f * cell) - 1.0f);
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

static inline void Cell(const float* gi, const float* gf, const float* gg,
                        const float* go, float* cs, float* hs, int m_end) {
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
  }
}
#else
static inline void Cell(const float* gi, const float* gf, const float* gg,
                        const float* go, float* cs, float* hs, int m_end) {
  CellGeneric(gi, gf, gg, go, cs, hs, m_end);
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

// out[p, :] = bias + in[p, :] w for P coordinates: the gate pre-activations.
template <int V, int P>
static inline void GateMatmul(const Layer& layer, const float* in, float* out) {
  vec acc[P][V];
  const vec* b = reinterpret_cast<const vec*>(layer.bias.data());
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = b[v];
  const vec* w = reinterpret_cast<const vec*>(layer.w.data());
  for (int k = 0; k < layer.in; ++k, w += V) {
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
      const float s = in[p * layer.in + k];
      for (int v = 0; v < V; ++v) acc[p][v] += s * row[v];
    }
  }
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v)
      *reinterpret_cast<uvec*>(out + (p * V + v) * kLanes) = acc[p][v];
}

template <int V>
static inline void GateMatmulGroup(const Layer& layer, const float* in,
                                   float* out) {
  // Up to 24 accumulators: four coordinates a pass while a padded row has at
  // most 5 vectors (h <= 20), two up to 10 (h <= 40), then one.
  constexpr int P = V <= 5 ? 4 : (V <= 10 ? 2 : 1);
  for (int p = 0; p < kGroup; p += P)
    GateMatmul<V, P>(layer, in + p * layer.in, out + p * V * kLanes);
}

typedef void (*GateMatmulFn)(const Layer&, const float*, float*);

static GateMatmulFn GateMatmulFor(int vectors) {
  static const GateMatmulFn fns[kMaxVectors] = {
      GateMatmulGroup<1>, GateMatmulGroup<2>,  GateMatmulGroup<3>,
      GateMatmulGroup<4>, GateMatmulGroup<5>,  GateMatmulGroup<6>,
      GateMatmulGroup<7>, GateMatmulGroup<8>,  GateMatmulGroup<9>,
      GateMatmulGroup<10>, GateMatmulGroup<11>, GateMatmulGroup<12>};
  return fns[vectors - 1];
}

// ---------------------------------------------------------------------------

class LstmStepOp : public OpKernel {
 public:
  explicit LstmStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string preprocess;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("preprocess", &preprocess));
    log_sign_ = preprocess == "log_sign";
    OP_REQUIRES_OK(ctx, ctx->GetAttr("p", &p_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("output_scale", &output_scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_layers", &num_layers_));
    int num_state;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_state", &num_state));
    OP_REQUIRES(ctx, num_state == 2 * num_layers_,
                InvalidArgument("num_state must be 2 * num_layers (h and c "
                                "of each layer); got ", num_state, " and ",
                                num_layers_));
    ::tensorflow::DataType dtype;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("S", &dtype));
    bfloat16_state_ = dtype == ::tensorflow::DT_BFLOAT16;
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
    for (int s = 0; s < 2 * num_layers_; ++s) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, new_state.allocate(s, state[s].shape(), &t));
      out.push_back(t->data());
    }
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
    prepared->layers.resize(num_layers_);
    int width = log_sign_ ? 2 : 1;
    for (int l = 0; l < num_layers_; ++l) {
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
        if (t.dtype() != (bfloat16_state_ ? ::tensorflow::DT_BFLOAT16
                                          : ::tensorflow::DT_FLOAT))
          return InvalidArgument("state[", 2 * l + s, "] must be ",
                                 bfloat16_state_ ? "bfloat16" : "float32",
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
      prepared->w_out[j] = output_scale_ * out_kernel.flat<float>()(j);
    prepared->b_out = output_scale_ * out_bias.flat<float>()(0);
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
    for (int s = 0; s < 2 * num_layers_; ++s) {
      args.state_in.push_back(state[s].data());
      args.state_out.push_back(out[s]);
    }
    const int64_t groups = (n + kGroup - 1) / kGroup;
    int64_t flops = 0;
    for (const Layer& layer : prepared->layers)
      flops += 2 * layer.in * 4 * layer.h;
    auto work = [&](int64_t begin, int64_t end) {
      if (bfloat16_state_) {
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
    for (int64_t start = begin; start < end; start += kGroup) {
      const int count = static_cast<int>(std::min<int64_t>(kGroup,
                                                           end - start));
      int width = Features(args.grads + start, count, in.data(),
                           layers[0].in);
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
        GateMatmulFor(layer.vectors)(layer, in.data(), pre.data());
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
        Cell(gi, gf, gg, go, cs, hs, m_end);
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

  // Writes the preprocessed gradients of `count` coordinates into the first
  // columns of `in` (rows of `stride`); returns the feature width.
  int Features(const float* g, int count, float* in, int stride) const {
    if (!log_sign_) {
      for (int p = 0; p < count; ++p) in[p * stride] = g[p];
      return 1;
    }
    // As the TF path's constants: math.exp in double, then float32.
    const float threshold = static_cast<float>(std::exp(-double{p_}));
    const float e_p = static_cast<float>(std::exp(double{p_}));
    for (int p = 0; p < count; ++p) {
      const float a = std::fabs(g[p]);
      if (a >= threshold) {
        in[p * stride] = std::log(a) / p_;
        in[p * stride + 1] = g[p] > 0.0f ? 1.0f : (g[p] < 0.0f ? -1.0f : 0.0f);
      } else {
        in[p * stride] = -1.0f;
        in[p * stride + 1] = g[p] * e_p;
      }
    }
    return 2;
  }

  bool log_sign_ = true;
  bool bfloat16_state_ = false;
  float p_ = 10.0f;
  float output_scale_ = 0.1f;
  int num_layers_ = 2;
};

// The same step, written into the state variables themselves: no new state
// buffers (whose first touch costs a page fault a 4 KB page) and half the
// peak state memory. A variable whose buffer is shared (a read of it is
// still alive) gets a new buffer, as TensorFlow's training ops do.
class LstmApplyOp : public LstmStepOp {
 public:
  explicit LstmApplyOp(OpKernelConstruction* ctx) : LstmStepOp(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const int num_state = 2 * num_layers_;
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
    L2L_LSTM_ATTRS
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      int num_state;
      TF_RETURN_IF_ERROR(c->GetAttr("num_state", &num_state));
      for (int s = 0; s < num_state; ++s) c->set_output(1 + s, c->input(1 + s));
      return ::tensorflow::OkStatus();
    })
    .Doc("One step of the coordinatewise LSTM optimizer (l2l_tf).");

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

}  // namespace l2l_tf
