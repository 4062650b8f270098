// DecoderPlan: a decode-only step of a Llama decoder stack in one call (no Python between the ops), and the
// module's Python bindings. The plan holds each layer's norms and packed weights; `decode` runs, per layer:
// RMSNorm -> qkv GEMM -> rotary -> K/V into the paged cache -> paged decode attention -> o GEMM + residual ->
// RMSNorm -> gate_up GEMM -> SiLU-mul -> down GEMM + residual, the same kernels, in the same order, as
// model/layers/cpu_decoder.py calls one by one for mixed steps: a token gets the same bits either way.
#include <torch/csrc/utils/pybind.h>  // not torch/extension.h: the whole C++ API would triple the build time

#include <vector>

#include "kernels.h"
#include "simd.h"

namespace kvserve {
namespace {
struct Linear {
  at::Tensor packed;
  int64_t qtype, n;
  c10::optional<at::Tensor> bias;
  at::Tensor operator()(const at::Tensor& x, const c10::optional<at::Tensor>& residual = c10::nullopt) const {
    return gemm(x, packed, qtype, n, bias, residual);
  }
};

struct Layer {
  at::Tensor input_norm, post_norm;
  Linear qkv, o, gate_up, down;
};

class DecoderPlan {
 public:
  DecoderPlan(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps, double scale)
      : heads_(num_heads), kv_heads_(num_kv_heads), head_dim_(head_dim), eps_(eps), scale_(scale) {
    TORCH_CHECK(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0 && head_dim > 0,
                "DecoderPlan: heads must be a positive multiple of kv_heads");
  }
  void add_layer(at::Tensor input_norm, at::Tensor post_norm, Linear qkv, Linear o, Linear gate_up, Linear down) {
    const int64_t q = heads_ * head_dim_, kv = kv_heads_ * head_dim_;
    TORCH_CHECK(qkv.n == q + 2 * kv && o.n == input_norm.numel() && gate_up.n % 2 == 0 && down.n == o.n,
                "DecoderPlan: layer shapes do not match the heads");
    layers_.push_back({std::move(input_norm), std::move(post_norm), std::move(qkv), std::move(o),
                       std::move(gate_up), std::move(down)});
  }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // x [n, hidden] -> [n, hidden] after every layer; one decode token per sequence.
  at::Tensor decode(at::Tensor x, std::vector<at::Tensor> caches, const at::Tensor& cos, const at::Tensor& sin,
                    const at::Tensor& slots, const at::Tensor& block_tables, const at::Tensor& context_lens) const {
    TORCH_CHECK(caches.size() == layers_.size(), "DecoderPlan: one cache per layer");
    const int64_t q = heads_ * head_dim_, kv = kv_heads_ * head_dim_;
    for (size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = layers_[l];
      at::Tensor qkv = layer.qkv(rms_norm(x, layer.input_norm, eps_));
      rotary_(qkv, cos, sin, heads_ + kv_heads_, head_dim_);
      write_kv(caches[l], qkv, slots, q, kv);
      const at::Tensor attn = decode_attention(qkv, caches[l], block_tables, context_lens, heads_, scale_);
      x = layer.o(attn, x);
      x = layer.down(silu_mul(layer.gate_up(rms_norm(x, layer.post_norm, eps_))), x);
    }
    return x;
  }

 private:
  int64_t heads_, kv_heads_, head_dim_;
  double eps_, scale_;
  std::vector<Layer> layers_;
};
}  // namespace
}  // namespace kvserve

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace kvserve;
  using py::arg;
  const auto nogil = py::call_guard<py::gil_scoped_release>();  // the kernels run without the GIL
  m.attr("isa") = kIsa;
  m.def("gemm", &gemm, "out[M, N] = (residual +) x @ W^T (+ bias)", arg("x"), arg("packed"), arg("qtype"), arg("n"),
        arg("bias") = py::none(), arg("residual") = py::none(), nogil);
  m.def("pack", &pack, "GGUF blocks -> packed groups", arg("blocks"), arg("qtype"), arg("n"), arg("k"), nogil);
  m.def("unpack", &unpack, "packed -> fp32 [N/16, K, 16]", arg("packed"), arg("qtype"), arg("k"), nogil);
  m.def("rms_norm", &rms_norm, "w * (x * rsqrt(mean(x^2) + eps)) per row", arg("x"), arg("weight"), arg("eps"), nogil);
  m.def("rotary_", &rotary_, "rotate_half rotary on the first `heads` heads of each row, in place", arg("qkv"),
        arg("cos"), arg("sin"), arg("heads"), arg("head_dim"), nogil);
  m.def("write_kv", &write_kv, "k, v of each row of qkv into its cache slot", arg("cache"), arg("qkv"), arg("slots"),
        arg("k_offset"), arg("kv_size"), nogil);
  m.def("decode_attention", &decode_attention, "one query per sequence against its paged K/V, read in place",
        arg("qkv"), arg("cache"), arg("block_tables"), arg("context_lens"), arg("num_heads"), arg("scale"), nogil);
  m.def("silu_mul", &silu_mul, "silu(gate) * up of [gate | up] rows", arg("gate_up"), nogil);
  py::class_<Linear>(m, "Linear")
      .def(py::init([](at::Tensor packed, int64_t qtype, int64_t n, c10::optional<at::Tensor> bias) {
             return Linear{std::move(packed), qtype, n, std::move(bias)};
           }),
           arg("packed"), arg("qtype"), arg("n"), arg("bias") = py::none());
  py::class_<DecoderPlan>(m, "DecoderPlan")
      .def(py::init<int64_t, int64_t, int64_t, double, double>(), arg("num_heads"), arg("num_kv_heads"),
           arg("head_dim"), arg("eps"), arg("scale"))
      .def("add_layer", &DecoderPlan::add_layer, arg("input_norm"), arg("post_norm"), arg("qkv"), arg("o"),
           arg("gate_up"), arg("down"))
      .def_property_readonly("num_layers", &DecoderPlan::num_layers)
      .def("decode", &DecoderPlan::decode, arg("x"), arg("caches"), arg("cos"), arg("sin"), arg("slots"),
           arg("block_tables"), arg("context_lens"), nogil);
}
