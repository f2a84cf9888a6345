"""A markdown table of `wavelm bench quality --json` reports, one row per report: the
listening measures of the generated clips (medians over clips) beside the real excerpts'.

    python recipes/piano/sampling/table.py recipes/piano/sampling/bundle/*.json
    python recipes/piano/sampling/table.py --by-name runs/piano6/select/*.json   # rows named by file
"""
import json
import sys
from pathlib import Path

COLS = [("harmonic share", lambda s: f"{s['generated']['harmonic_share']:.3f}"),
        ("loudest/quietest s", lambda s: f"{s['generated']['loudness_ratio']:.1f}x"),
        ("chroma top-7", lambda s: f"{s['generated']['chroma_top7']:.3f}"),
        ("chroma change", lambda s: f"{s['generated']['chroma_change']:.3f}" if "chroma_change" in s["generated"] else "-"),
        ("flatness / real", lambda s: f"{s['generated']['flatness'] / s['real']['flatness']:.1f}x"),
        ("onsets/s", lambda s: f"{s['generated']['onsets_per_s']:.2f}"),
        ("cont. flatness", lambda s: f"{s['continuation']['flatness_ratio']:.1f}x" if "continuation" in s else "-"),
        ("cont. harmonic gap", lambda s: f"{s['continuation']['harmonic_gap']:+.3f}" if "continuation" in s else "-"),
        ("model bits on clips", lambda s: f"{s['generated']['model_bits']:.2f}"),
        ("seeds differ", lambda s: "yes" if s["generated_pitches_differ"] else "no")]


def main(paths):
    by_name = "--by-name" in paths
    paths = [p for p in paths if p != "--by-name"]
    reps = [(Path(p).stem, json.loads(Path(p).read_text())) for p in paths]
    if not reps:
        sys.exit("no reports given")
    real = reps[0][1]["summary"]["real"]
    print(f"| {'report' if by_name else 'sampling'} | " + " | ".join(c for c, _ in COLS) + " |")
    print("|---|" + "---:|" * len(COLS))
    print("| *real excerpts (codec)* | " + f"{real['harmonic_share']:.3f} | {real['loudness_ratio']:.1f}x | "
          f"{real['chroma_top7']:.3f} | {real.get('chroma_change', float('nan')):.3f} | 1.0x | {real['onsets_per_s']:.2f} | 1.0x | +0.000 | "
          f"{real['model_bits']:.2f} | - |")
    for tag, rep in reps:
        s = rep["summary"]
        opts = {k: v for k, v in rep.get("sampling", {}).items() if not (k == "temperature" and v == 1.0)}
        shown = ", ".join(f"`--{k.replace('_', '-')} {v:g}`" if isinstance(v, float) else f"`--{k.replace('_', '-')} {v}`"
                          for k, v in opts.items()) or "defaults (temperature 1)"
        shown = f"{tag} ({shown})" if by_name else shown
        print(f"| {shown} | " + " | ".join(f(s) for _, f in COLS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
