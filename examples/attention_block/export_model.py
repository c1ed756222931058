"""Export a small causal self-attention block to ONNX with torch.

    python export_model.py --opset 23 -o attention_op23.onnx   # the ONNX Attention op
    python export_model.py --opset 18 -o attention_op18.onnx   # MatMul/Softmax/MatMul as torch decomposes it
"""
import argparse
import warnings

import torch
import torch.nn.functional as F


class AttentionBlock(torch.nn.Module):
    """Scaled-dot-product attention over pre-projected heads: (batch, heads, seq, head_dim)."""

    def __init__(self, causal: bool):
        super().__init__()
        self.causal = causal

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--opset", type=int, default=23, choices=[18, 23])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--no-causal", action="store_true")
    a = p.parse_args()
    shape = (1, a.heads, a.seq, a.head_dim)
    example = tuple(torch.randn(shape) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(AttentionBlock(not a.no_causal), example, a.output, dynamo=True,
                          opset_version=a.opset, input_names=["q", "k", "v"], output_names=["y"], verbose=False)
    print(f"wrote {a.output}: causal SDPA, q/k/v {list(shape)}, opset {a.opset}")


if __name__ == "__main__":
    main()
