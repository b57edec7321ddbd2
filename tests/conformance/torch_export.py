"""Export a small PyTorch module with ``torch.onnx.export(..., dynamo=True)``: the user's route in.

Run by ``test_pytorch.py`` under an interpreter that has torch (CI makes a virtualenv with
the CPU build), so the project's own environment needs no torch:

    python torch_export.py OUT_DIR   ->  OUT_DIR/net.onnx, OUT_DIR/data.npz (inputs and torch's outputs)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch


class Net(torch.nn.Module):
    """A convolution, global pooling and a linear classifier: NCHW images to 4 class scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return torch.softmax(self.fc(x), dim=-1)


def main(out: Path) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    images = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (32, 3, 32, 32)).astype(np.float32))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(net, (images[:2],), dynamo=True, input_names=["image"], output_names=["probs"],
                                dynamic_shapes={"image": {0: batch}})
    program.save(str(out / "net.onnx"))
    with torch.no_grad():
        probs = net(images).numpy()
    np.savez(out / "data.npz", image=images.numpy(), probs=probs)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
