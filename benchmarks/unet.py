"""U-Net latency: the converted published U-Net in onnxruntime vs the same model in torch, one run, same threads.

    python -m benchmarks.unet [--weights DIR] [--models CONVERTED_DIR] [--threads N] [--repeat N]

Needs the dev extras (torch, onnx) and the published weights (../shared/ptolemy-reference/weights).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.harness import machine_line, print_table, time_it

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "ptolemy-reference"


def main() -> None:
    """Time the U-Net at 1024x1440 (padded to 1024x1536) in onnxruntime and torch."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REFERENCE / "weights")
    parser.add_argument("--models", type=Path, help="a converted model set (default: convert into a temp dir)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--image", type=Path, default=REFERENCE / "images" / "medmag_readme_1024x1440.mrc")
    args = parser.parse_args()

    import torch

    from export.convert_ptolemy import convert
    from export.nets import UNet
    from ptolemy_rt.io import read_image
    from ptolemy_rt.models import load_models, physical_cores

    threads = args.threads or physical_cores()
    tmp = None
    models_dir = args.models
    if models_dir is None:
        tmp = tempfile.TemporaryDirectory()
        models_dir = convert(args.weights, Path(tmp.name) / "converted", bn="batch")
    data = read_image(args.image).data
    norm = (data - data.mean()) / data.std()
    h, w = norm.shape
    multiple = 256
    padded = np.zeros((1, 1, -(-h // multiple) * multiple, -(-w // multiple) * multiple), np.float32)
    padded[0, 0, :h, :w] = norm

    models = load_models(models_dir, provider="cpu", threads=threads)
    rows = [time_it("onnxruntime CPU", lambda: models.run("hole_unet", padded), repeat=args.repeat, warmup=1)]

    torch.set_num_threads(threads)
    net = UNet()
    state = torch.load(next(args.weights.glob("*unet*")), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.from_numpy(padded)

    def torch_run():
        with torch.inference_mode():
            return net(x)

    rows.append(time_it("torch (eager, inference_mode)", torch_run, repeat=args.repeat, warmup=1))
    diff = float(np.abs(models.run("hole_unet", padded) - torch_run().numpy()).max())
    print_table(rows, title=f"U-Net 9x64 at {h}x{w} (padded {padded.shape[2]}x{padded.shape[3]}), {threads} threads",
                baseline="onnxruntime CPU",
                extra=[("machine", machine_line()), ("max |logit ORT - torch|", f"{diff:.2e}"),
                       ("note", "peak RSS is the process's running maximum (ORT row measured first)")])
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
