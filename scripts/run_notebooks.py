#!/usr/bin/env python
"""Execute the notebooks in notebooks/ with papermill at one preset and report each result.

Usage: python scripts/run_notebooks.py --preset {ci,cpu,paper} [--only 01,03] [--output-dir DIR]

Each notebook runs with the working directory notebooks/ and the parameter `preset`, so figures
and tables go to figures/ and searches to runs/<preset>/. The executed copies go to the output
folder (default results/<preset>). The script prints one line per notebook (seconds, ok or the
failing cell and its error) and exits with status 1 if any notebook failed.

`--store` writes the executed copies back over notebooks/*.ipynb instead: this is how the
committed notebooks, executed at the ci preset, are produced for nbval.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
PRESETS = ("ci", "cpu", "paper")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, required=True,
                        help="notebook preset passed to every notebook as the parameter 'preset'")
    parser.add_argument("--only", default="",
                        help="comma-separated notebook number prefixes to run, e.g. 01,03 (default: all)")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the executed notebooks (default: results/<preset>)")
    parser.add_argument("--store", action="store_true",
                        help="overwrite notebooks/*.ipynb with the executed copies (for the ci preset)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not stream the notebooks' output (progress bars, prints) to the terminal")
    return parser.parse_args(argv)


def select_notebooks(only: str) -> list[Path]:
    notebooks = sorted(NOTEBOOKS_DIR.glob("0*.ipynb"))
    prefixes = [prefix.strip() for prefix in only.split(",") if prefix.strip()]
    if prefixes:
        notebooks = [path for path in notebooks if any(path.name.startswith(p) for p in prefixes)]
        if not notebooks:
            raise SystemExit(f"--only {only!r} matches no notebook in {NOTEBOOKS_DIR}")
    return notebooks


def describe_failure(output_path: Path, error: Exception) -> str:
    """Return 'cell N: ErrorName: message' for the first failed cell of an executed notebook."""
    try:
        notebook = nbformat.read(output_path, as_version=4)
    except (OSError, ValueError):
        return f"{type(error).__name__}: {error}"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"code cell {number}: {output['ename']}: {output['evalue']}"
    return f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"


def run_notebook(path: Path, output_path: Path, preset: str, kernel: str, log_output: bool) -> tuple[bool, float, str]:
    """Execute one notebook into `output_path` (atomically); return (ok, seconds, message)."""
    output_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output_path.stem}.", suffix=".ipynb", dir=output_path.parent)
    os.close(handle)
    started = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(path),
            temporary,
            parameters={"preset": preset},
            kernel_name=kernel,
            cwd=str(NOTEBOOKS_DIR),
            progress_bar=False,
            log_output=log_output,
            stdout_file=None,
        )
    except Exception as error:  # papermill raises PapermillExecutionError and kernel errors
        seconds = time.perf_counter() - started
        message = describe_failure(Path(temporary), error)
        failed_path = output_path.with_suffix(".failed.ipynb")
        if Path(temporary).exists():
            os.replace(temporary, failed_path)
            message += f" (executed copy: {failed_path.relative_to(ROOT) if failed_path.is_relative_to(ROOT) else failed_path})"
        return False, seconds, message
    seconds = time.perf_counter() - started
    _record_relative_paths(Path(temporary), path, output_path)
    os.replace(temporary, output_path)
    return True, seconds, "ok"


def _display_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _record_relative_paths(executed: Path, input_path: Path, output_path: Path) -> None:
    """Replace papermill's absolute input and temporary output paths by repository-relative ones.

    The stored notebooks then carry no machine-specific paths in their metadata.
    """
    notebook = nbformat.read(executed, as_version=4)
    metadata = notebook.metadata.get("papermill", {})
    metadata["input_path"] = _display_path(input_path)
    metadata["output_path"] = _display_path(output_path)
    nbformat.write(notebook, executed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.quiet:
        # papermill logs each cell's output through logging when log_output is set.
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    output_dir = NOTEBOOKS_DIR if args.store else (args.output_dir or ROOT / "results" / args.preset)
    notebooks = select_notebooks(args.only)

    results = []
    for path in notebooks:
        print(f"running {path.name} at preset {args.preset} ...", flush=True)
        ok, seconds, message = run_notebook(path, output_dir / path.name, args.preset, args.kernel, not args.quiet)
        results.append((path.name, ok, seconds, message))
        print(f"{path.name}: {seconds:.0f} s, {message}", flush=True)

    print(f"\nsummary (preset {args.preset}, executed copies in {output_dir}):")
    for name, ok, seconds, message in results:
        print(f"  {name:32s} {seconds:7.0f} s  {message}")
    failed = [name for name, ok, _, _ in results if not ok]
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ran without error")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
