"""models/ holds no device branches (DESIGN.md): dispatch is the ops' business, not the models'."""

from __future__ import annotations

import re
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"

# a device test in any spelling: is_cuda, x.type ==, x.device ==, torch.cuda.*, an if naming a device
FORBIDDEN = re.compile(r"\.is_cuda\b|\.is_cpu\b|\bdevice\.type\b|\w\.type\s*[!=]=|\.device\s*[!=]=|"
                       r"torch\.(cuda|hpu|xpu|mps)\b|habana|\bif\b[^\n]*[\"'](cuda|cpu|hpu|xpu|mps)[\"']")


def test_models_have_no_device_if():
    offenders = []
    for path in sorted(MODELS.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code):
                offenders.append(f"{path.relative_to(MODELS.parent)}:{number}: {line.strip()}")
    assert not offenders, "device branches in models/:\n" + "\n".join(offenders)


def test_pattern_catches_the_usual_spellings():
    for bad in ('if x.is_cuda:', 'if x.device.type == "cuda":', 'torch.cuda.synchronize()',
                'if device == "cpu":', 'y = a if torch.cuda.is_available() else b', 'if dev.type != "cpu":'):
        assert FORBIDDEN.search(bad), bad
    for fine in ('x = torch.zeros(3, device=ids.device)', 'h = h.to(device)',
                 'if torch.distributed.is_available():'):
        assert not FORBIDDEN.search(fine), fine
