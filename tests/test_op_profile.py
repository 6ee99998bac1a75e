"""The profiler behind the README's gap analysis: module attribution and a tiny end-to-end run."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "op_profile.py"


def _load():
    spec = importlib.util.spec_from_file_location("op_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_of_keeps_flax_paths_and_drops_transforms():
    mod = _load()
    name = (
        "jit(step)/transpose(jvp(EfficientViTMIT))/stages_2/blocks_1/local_module/"
        "point_conv/conv/nc,nd->cd/dot_general"
    )
    assert mod.module_of(name, 2) == "stages_2/blocks_1"
    assert mod.module_of(name, 9) == "stages_2/blocks_1/local_module/point_conv/conv/nc,nd->cd"
    assert (
        mod.module_of(
            "jit(f)/EfficientViTMSRA/EfficientViTMSRA.forward_features/patch_embed/"
            "conv1/conv/conv_general_dilated",
            2,
        )
        == "patch_embed/conv1"
    )
    assert mod.module_of("", 2) == "(other)"


def test_op_modules_reads_instruction_metadata():
    mod = _load()
    hlo = (
        "  %ynn_fusion.3 = f32[2,4]{1,0} fusion(%a), kind=kCustom, "
        'metadata={op_name="jit(f)/M/head/fc/dot_general" stack_frame_id=1}\n'
        '  ROOT %add.1 = f32[2,4]{1,0} add(%x, %y), metadata={op_name="jit(f)/M/add"}\n'
    )
    assert mod.op_modules(hlo) == {
        "ynn_fusion.3": "jit(f)/M/head/fc/dot_general",
        "add.1": "jit(f)/M/add",
    }


def test_profile_of_the_core_model_attributes_time_to_its_blocks():
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "core",
            "--batch",
            "1",
            "--size",
            "32",
            "--runs",
            "1",
            "--top",
            "40",
            "--depth",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    module_table = out.split("\nmodule")[1].split("\nHLO op kind")[0]
    rows = [line.split() for line in module_table.strip().splitlines()[1:]]
    shares = {r[0]: float(r[-1].rstrip("%")) for r in rows}
    # the blocks of the default config (3 stages), not one anonymous bucket
    assert {"stage_0_block_0", "stage_2_block_0"} <= set(shares), shares
    # Most of the step is in the blocks (about 30% under the tests' XLA flags, 60% without them);
    # a broken metadata join would leave everything in "(other)".
    assert sum(v for k, v in shares.items() if k.startswith("stage_")) > 20.0
