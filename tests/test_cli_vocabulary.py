"""One flag vocabulary for every ``drnet`` command: walk every sub-command's parser.

A flag of the vocabulary has the same short form, type/action and meaning wherever it appears;
commands that run inference take the same running flags; retired spellings stay accepted (hidden)
and parse to exactly what their canonical spelling gives. A new sub-command that drifts fails here.
"""

from __future__ import annotations

import argparse
import json
import logging

import pytest

from drnet.cli import build_parser, main, non_negative_int, positive_int
from drnet.cli.vocab import HelpFormatter, channel_widths


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command path, parser)`` for every parser that runs something (no sub-commands)."""
    seen: set[int] = set()
    subactions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subactions:
        yield path, parser
        return
    for name, sub in subactions[0].choices.items():
        if id(sub) in seen:  # an alias of a command (segment test = segment eval)
            continue
        seen.add(id(sub))
        yield from leaf_parsers(sub, (*path, name))


PARSER = build_parser()
LEAVES = dict(leaf_parsers(PARSER))
COMMANDS = sorted(" ".join(path) for path in LEAVES)


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]


def option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in visible(parser) if flag in a.option_strings), None)


def parser_of(command: str) -> argparse.ArgumentParser:
    return LEAVES[tuple(command.split())]


def test_the_walk_finds_every_command():
    assert {
        "demo", "models", "classify train", "classify eval", "classify predict", "localize eval",
        "localize predict", "segment train", "segment eval", "segment predict", "data check",
        "data scenes", "data cityscapes-prepare", "benchmark", "export onnx", "quantize",
    } <= set(COMMANDS)  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_visible_option_has_help_showing_its_default(command):
    parser = parser_of(command)
    formatter = parser._get_formatter()
    assert isinstance(formatter, HelpFormatter), command
    for action in visible(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{command} {name} has no help"
        shown = formatter._get_help_string(action)
        empty = action.default in (None, False, "", (), []) or action.default is argparse.SUPPRESS
        assert empty or "default" in shown, f"{command} {name}: help hides its default"
    parser.format_help()  # every help string formats


# flag -> (option strings, check of the action): the same wherever the flag appears
def _flag(action: argparse.Action) -> bool:
    plain = isinstance(action, argparse._StoreTrueAction)
    old_path_form = action.nargs == "?" and action.const is True and action.default is False
    return plain or old_path_form


VOCABULARY = {
    "--model": (["--model"], lambda a: a.dest == "model" and a.nargs is None and a.type is None),
    "--weights": (["--weights"], lambda a: a.dest == "weights" and a.nargs is None),
    "--pretrained": (["--pretrained"], lambda a: a.dest == "pretrained" and _flag(a)),
    "--num-classes": (["--num-classes"], lambda a: a.type is positive_int),
    "--class-names": (["--class-names"], lambda a: a.dest == "class_names" and a.type is None),
    "--output-dir": (["-o", "--output-dir"], lambda a: a.dest == "output_dir" and a.nargs is None),
    "--batch-size": (["-b", "--batch-size"], lambda a: a.type is positive_int),
    "--workers": (["-j", "--workers"], lambda a: a.type is non_negative_int),
    "--device": (["--device"], lambda a: a.dest == "device" and a.default == "auto"),
    "--no-progress": (["--no-progress"], lambda a: a.dest == "no_progress" and _flag(a)),
    "--no-fast": (["--no-fast"], lambda a: a.dest == "no_fast" and _flag(a)),
    "--data-dir": (["-d", "--data-dir"], lambda a: a.dest == "data_dir" and a.nargs is None),
    "--channels": (["--channels"], lambda a: a.dest == "channels" and a.type is channel_widths),
    "--json": (["--json"], lambda a: a.dest == "json" and a.nargs == "?" and a.const == "-"),
}  # fmt: skip
DESTS = {"--num-classes": "num_classes", "--batch-size": "batch_size", "--workers": "workers"}
SHORT_FORMS = {"-o": "--output-dir", "-b": "--batch-size", "-j": "--workers", "-d": "--data-dir"}


@pytest.mark.parametrize("command", COMMANDS)
def test_vocabulary_flags_mean_the_same_everywhere(command):
    parser = parser_of(command)
    for action in visible(parser):
        for flag in action.option_strings:
            if flag in VOCABULARY:
                strings, check = VOCABULARY[flag]
                assert action.option_strings == strings, (command, action.option_strings)
                assert check(action), f"{command} {flag} drifts from the vocabulary"
                assert action.dest == DESTS.get(flag, action.dest), (command, flag)
            if flag in SHORT_FORMS:
                assert SHORT_FORMS[flag] in action.option_strings, (command, flag)
    # the same idea never under another visible name
    names = {s for a in visible(parser) for s in a.option_strings}
    for dest, flag in [("data_dir", "--data-dir"), ("output_dir", "--output-dir")]:
        owners = [a for a in visible(parser) if a.dest == dest and a.option_strings]
        assert all(flag in a.option_strings for a in owners), (command, dest)
    assert not names & {"--out", "--batch", "--checkpoint", "--arch", "--classes"}


INFERENCE = [c for c in COMMANDS if c.split()[-1] in ("eval", "predict")]


def test_inference_commands_are_found():
    assert set(INFERENCE) == {
        "classify eval", "classify predict", "localize eval", "localize predict",
        "segment eval", "segment predict",
    }  # fmt: skip


@pytest.mark.parametrize("command", INFERENCE)
def test_inference_commands_take_the_running_flags(command):
    parser = parser_of(command)
    for flag in ("--weights", "--device", "--no-fast", "--no-progress", "--output-dir"):
        assert option(parser, flag) is not None, f"{command} lacks {flag}"
    assert option(parser, "--model") is not None and option(parser, "--pretrained") is not None


RETIRED = {
    "--arch", "--checkpoint", "--classes", "-c", "--batch", "--out", "--quiet", "--save_path",
    "--step", "--wd", "-s", "--phase", "--data",
}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_retired_spellings_are_hidden_aliases(command):
    parser = parser_of(command)
    shown = {s for a in visible(parser) for s in a.option_strings}
    assert not shown & RETIRED, (command, shown & RETIRED)
    usage = parser.format_usage() + parser.format_help()
    for flag in RETIRED - {"-c", "-s"}:
        assert f"{flag} " not in usage and f"{flag}," not in usage, (command, flag)
    dests = {a.dest for a in visible(parser)}
    for action in parser._actions:
        if action.help is argparse.SUPPRESS and action.option_strings:
            # an alias of a visible option that never overwrites its default
            assert action.dest in dests, (command, action.option_strings)
            assert action.default is argparse.SUPPRESS, (command, action.option_strings)


# Every drnet command line of README.md and tests/*.py (as of the vocabulary change), with old
# spellings, next to its canonical spelling: both must parse to the same values.
OLD_AND_CANONICAL = [
    # README.md
    ("demo --output-dir out", "demo -o out"),
    ("demo --paper", "demo --paper"),
    ("classify train data/cls --model drn_d_22 --channels 8,16,32,32,64,64,64,64 --crop-size 64 "
     "--resize-size 64 --crop-scale 0.5 --epochs 30 --batch-size 64 --lr 0.1 --lr-mode cosine "
     "--output-dir runs/cls",
     "classify train -d data/cls --model drn_d_22 --channels 8,16,32,32,64,64,64,64 "
     "--crop-size 64 --resize-size 64 --crop-scale 0.5 --epochs 30 -b 64 --lr 0.1 "
     "--lr-mode cosine -o runs/cls"),
    ("classify eval data/cls/val --weights runs/cls --output-dir runs/cls-eval",
     "classify eval -d data/cls/val --weights runs/cls -o runs/cls-eval"),
    ("classify predict photos/ cat.jpg --weights runs/cls --top-k 5 --output-dir runs/cls-pred",
     "classify predict photos/ cat.jpg --weights runs/cls --top-k 5 -o runs/cls-pred"),
    ("classify train /data/imagenet --model drn_d_22 --epochs 90 --batch-size 256 --amp "
     "--workers 8 --output-dir runs/drn_d_22",
     "classify train /data/imagenet --model drn_d_22 --epochs 90 -b 256 --amp -j 8 "
     "-o runs/drn_d_22"),
    ("classify eval /data/imagenet/val --model drn_d_22 --pretrained --classes synsets.txt",
     "classify eval /data/imagenet/val --model drn_d_22 --pretrained --class-names synsets.txt"),
    ("localize eval data/cls/val --boxes data/cls/boxes_val.csv --val-dir data/cls/holdout "
     "--val-boxes data/cls/boxes_holdout.csv --weights runs/cls --output-dir runs/loc",
     "localize eval -d data/cls/val --boxes data/cls/boxes_val.csv --val-dir data/cls/holdout "
     "--val-boxes data/cls/boxes_holdout.csv --weights runs/cls -o runs/loc"),
    ("localize predict photos/ --weights runs/cls --threshold runs/loc/m.json --top-k 3 "
     "--save-heatmaps --output-dir runs/loc-pred",
     "localize predict photos/ --weights runs/cls --threshold runs/loc/m.json --top-k 3 "
     "--save-heatmaps -o runs/loc-pred"),
    ("localize eval /data/imagenet/val --boxes /b/val --val-dir /h --val-boxes /b/train "
     "--model drn_c_26 --pretrained",
     "localize eval --data-dir /data/imagenet/val --boxes /b/val --val-dir /h "
     "--val-boxes /b/train --model drn_c_26 --pretrained"),
    ("segment train -d data/seg --arch drn_d_22 -c 11 -s 64 --batch-size 16 --epochs 30 "
     "--lr 0.01 --random-scale 1.5 -o runs/seg",
     "segment train data/seg --model drn_d_22 --num-classes 11 --crop-size 64 -b 16 "
     "--epochs 30 --lr 0.01 --random-scale 1.5 -o runs/seg"),
    ("segment train -d d --bn-sync --amp --resume auto",
     "segment train d --bn-sync --amp --resume auto"),
    ("segment train -d /data/cityscapes --arch drn_d_22 -c 19 -s 896 --batch-size 8 --epochs 500 "
     "--lr 0.01 --momentum 0.9 --weight-decay 1e-4 --lr-mode poly --random-scale 2 "
     "--random-rotate 10 --bn-sync --pretrained-backbone -j 8 -o runs/c",
     "segment train /data/cityscapes --model drn_d_22 --num-classes 19 --crop-size 896 -b 8 "
     "--epochs 500 --lr 0.01 --momentum 0.9 --weight-decay 1e-4 --lr-mode poly "
     "--random-scale 2 --random-rotate 10 --bn-sync --pretrained-backbone -j 8 -o runs/c"),
    ("segment eval -d /data/cityscapes --weights runs/c --phase val --ms",
     "segment eval /data/cityscapes --weights runs/c --split val --ms"),
    ("segment eval -d /data/cityscapes --weights drn_d_22_cityscapes.pth --arch drn_d_22 --ms "
     "--flip --window 1024 --stride 768",
     "segment eval /data/cityscapes --weights drn_d_22_cityscapes.pth --model drn_d_22 --ms "
     "--flip --window 1024 --stride 768"),
    ("segment predict photo.jpg folder/ list.txt --weights runs/seg -o out/",
     "segment predict photo.jpg folder/ list.txt --weights runs/seg --output-dir out/"),
    ("segment predict -d /data/cityscapes --phase test --weights w --save labels,color",
     "segment predict --data-dir /data/cityscapes --split test --weights w --save labels,color"),
    ("data scenes classification data/cls --train 5000 --test 1000",
     "data scenes classification -o data/cls --train 5000 --test 1000"),
    ("data scenes segmentation data/seg --train 3000 --test 500 --canvas 96 --items 1 4",
     "data scenes segmentation --output-dir data/seg --train 3000 --test 500 --canvas 96 "
     "--items 1 4"),
    ("data cityscapes-prepare /data/cityscapes", "data cityscapes-prepare -d /data/cityscapes"),
    ("quantize --checkpoint w.pth --data data/seg", "quantize data/seg --weights w.pth"),
    ("export onnx model.onnx --model drn_d_22 --checkpoint w.pth --size 512x1024",
     "export onnx model.onnx --model drn_d_22 --weights w.pth --size 512x1024"),
    ("benchmark --model drn_d_22 --task segmentation --size 512x1024 --variants eager,fast,int8 "
     "--out r", "benchmark --model drn_d_22 --task segmentation --size 512x1024 "
     "--variants eager,fast,int8 -o r"),
    ("data check data/seg --crop-size 896 --json check.json",
     "data check -d data/seg --crop-size 896 --json check.json"),
    ("data check /data/cityscapes --splits train,val",
     "data check -d /data/cityscapes --splits train,val"),
    ("models --json", "models --json -"),
    # tests/*.py
    ("benchmark --channels 8,8,16,16,32,32,32,32 --size 32 --repeats 1 --num-classes 3 --out t "
     "--name quick --quiet --no-peak",
     "benchmark --channels 8,8,16,16,32,32,32,32 --size 32 --repeats 1 --num-classes 3 -o t "
     "--name quick --no-progress --no-peak"),
    ("benchmark --model drn_d_22 --size 32x48 --batch 2 --mode both --repeats 1 --num-classes 4 "
     "--out t --quiet --variants eager,fast,fast_nchw "
     "--train-variants eager,channels_last,grad_checkpoint",
     "benchmark --model drn_d_22 --size 32x48 -b 2 --mode both --repeats 1 --num-classes 4 "
     "-o t --no-progress --variants eager,fast,fast_nchw "
     "--train-variants eager,channels_last,grad_checkpoint"),
    ("data check d --no-progress", "data check -d d --no-progress"),
    ("demo --quick --output-dir o --no-progress", "demo --quick -o o --no-progress"),
    ("localize eval v --boxes b.csv --weights r --no-progress --workers 0 --threshold 0.3 "
     "--output-dir o", "localize eval -d v --boxes b.csv --weights r --no-progress -j 0 "
     "--threshold 0.3 -o o"),
    ("localize predict n.png --weights r", "localize predict n.png --weights r"),
    ("classify train d --model drn_d_22 --channels 4,8,16,16,32,32,32,32 --crop-size 32 "
     "--batch-size 6 --max-iters 2 --lr 0.01 --workers 0 --output-dir r --no-progress "
     "--epochs 2 --lr-mode cosine --resume auto",
     "classify train -d d --model drn_d_22 --channels 4,8,16,16,32,32,32,32 --crop-size 32 "
     "-b 6 --max-iters 2 --lr 0.01 -j 0 -o r --no-progress --epochs 2 --lr-mode cosine "
     "--resume auto"),
    ("classify eval v --weights r --output-dir e --workers 0 --no-progress",
     "classify eval -d v --weights r -o e -j 0 --no-progress"),
    ("classify predict v/red v/blue/0.png --weights r/c.pth --top-k 2 --output-dir p "
     "--no-progress", "classify predict v/red v/blue/0.png --weights r/c.pth --top-k 2 -o p "
     "--no-progress"),
    ("localize eval v --boxes b.csv --val-dir h --weights r --output-dir l --workers 0 "
     "--save-images 4 --no-progress", "localize eval v --boxes b.csv --val-dir h --weights r "
     "-o l -j 0 --save-images 4 --no-progress"),
    ("localize predict v/g --weights r --threshold m.json --top-k 2 --save-heatmaps "
     "--output-dir h --no-progress", "localize predict v/g --weights r --threshold m.json "
     "--top-k 2 --save-heatmaps -o h --no-progress"),
    ("export onnx o.onnx --model drn_d_22 --num-classes 3 --size 40x56 --task classification",
     "export onnx o.onnx --model drn_d_22 --num-classes 3 --size 40x56 --task classification"),
    ("quantize --checkpoint w.pth --data d --channels 8,8,16,16,32,32,32,32 --calibration 2 "
     "--no-compile --json", "quantize -d d --weights w.pth --channels 8,8,16,16,32,32,32,32 "
     "--calibration 2 --no-compile --json -"),
    ("segment train -d d --channels 8,8,16,16,32,32,32,32 -s 32 --epochs 1 --batch-size 2 -j 0 "
     "-o o --device cpu --no-progress --weights r -c 5",
     "segment train d --channels 8,8,16,16,32,32,32,32 --crop-size 32 --epochs 1 -b 2 -j 0 "
     "-o o --device cpu --no-progress --weights r --num-classes 5"),
    ("segment train -d d --arch drn_d_222", "segment train d --model drn_d_222"),
    ("classify train d --channels 8,8,16,16,32,32,32,32 --crop-size 16 --epochs 1 "
     "--batch-size 2 --workers 0 --output-dir o --device cpu --no-progress --skip-bad-samples",
     "classify train d --channels 8,8,16,16,32,32,32,32 --crop-size 16 --epochs 1 -b 2 -j 0 "
     "-o o --device cpu --no-progress --skip-bad-samples"),
    ("segment predict n.png --weights r -o o --device cpu --no-progress",
     "segment predict n.png --weights r --output-dir o --device cpu --no-progress"),
    ("segment eval -d d --weights r -c 5 -o e --device cpu --no-progress",
     "segment eval d --weights r --num-classes 5 -o e --device cpu --no-progress"),
    ("classify eval v --weights r --classes names.txt --output-dir e --device cpu",
     "classify eval v --weights r --class-names names.txt -o e --device cpu"),
    ("segment eval -d d --weights p --arch drn_d_22 --channels 8,8,16,16,32,32,32,32 -o e",
     "segment eval d --weights p --model drn_d_22 --channels 8,8,16,16,32,32,32,32 -o e"),
    ("classify predict v --model drn_d_22 --pretrained --output-dir p --device cpu",
     "classify predict v --model drn_d_22 --pretrained -o p --device cpu"),
    ("segment train -d d --batch-size 4 -s 32 --random-scale 2 --random-rotate 10 --step 5 "
     "--lr-mode step --wd 1e-4 -o r", "segment train d -b 4 --crop-size 32 --random-scale 2 "
     "--random-rotate 10 --lr-step 5 --lr-mode step --weight-decay 1e-4 -o r"),
    ("segment eval -d d --weights r --ms --flip --window 24 -o e --no-progress --device cpu",
     "segment eval d --weights r --ms --flip --window 24 -o e --no-progress --device cpu"),
    ("segment predict -d d --phase val --weights r/c.pth -o p --save labels --no-progress",
     "segment predict -d d --split val --weights r/c.pth -o p --save labels --no-progress"),
    ("classify eval v --weights m.pth --model drn_d_22 --channels 8,8,16,16,32,32,32,32 "
     "--crop-size 16 --workers 1 --output-dir e", "classify eval v --weights m.pth "
     "--model drn_d_22 --channels 8,8,16,16,32,32,32,32 --crop-size 16 -j 1 -o e"),
    ("segment predict d/images --weights p --arch drn_d_22 -o pr",
     "segment predict d/images --weights p --model drn_d_22 -o pr"),
    ("localize predict d/images --weights p --model drn_d_22 --output-dir lp",
     "localize predict d/images --weights p --model drn_d_22 -o lp"),
    ("segment train -d d --resume p.pth", "segment train d --resume p.pth"),
    ("data scenes segmentation o --train 4 --test 2",
     "data scenes segmentation -o o --train 4 --test 2"),
    ("--debug segment train -d d", "--debug segment train d"),
    # the original segment.py and earlier drnet spellings
    ("segment train -d d --pretrained w.pth --save_path runs/x",
     "segment train d --weights w.pth -o runs/x"),
    ("segment eval -d d --pretrained w.pth", "segment eval d --weights w.pth"),
    ("segment test -d d --weights w.pth --phase val", "segment test d --weights w.pth"),
    ("data check d -c 19 -s 896 -l lists",
     "data check d --num-classes 19 --crop-size 896 -l lists"),
]  # fmt: skip


def parse(command: str) -> dict:
    return vars(build_parser().parse_args(command.split()))


@pytest.mark.parametrize("old, canonical", OLD_AND_CANONICAL)
def test_old_command_lines_parse_as_their_canonical_spelling(old, canonical):
    assert parse(old) == parse(canonical)


def test_values_land_where_the_library_reads_them():
    args = parse("segment train -d d --arch drn_c_26 -c 7 -s 64 --pretrained w.pth")
    assert (args["data_dir"], args["model"], args["num_classes"]) == ("d", "drn_c_26", 7)
    assert (args["crop_size"], args["weights"], args["pretrained"]) == (64, "w.pth", False)
    assert parse("segment eval d --model drn_d_22 --pretrained")["pretrained"] is True
    # an absent positional DATA keeps --data-dir; the positional alone works too
    assert parse("segment eval --data-dir x --weights w")["data_dir"] == "x"
    assert parse("classify eval v --weights w")["data_dir"] == "v"
    assert parse("benchmark --quiet")["no_progress"] is True
    assert parse("models --json t.json")["json"] == "t.json"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["classify", "eval", "--weights", "w"], "DATA (or -d/--data-dir)"),
        (["segment", "eval", "--weights", "w"], "DATA (or -d/--data-dir)"),
        (["quantize", "d"], "--weights"),
        (["data", "scenes", "segmentation"], "OUTPUT_DIR (or -o/--output-dir)"),
    ],
)
def test_required_values_accept_any_spelling_and_say_so(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_quantize_old_required_spellings_still_satisfy():
    args = parse("quantize --checkpoint w.pth --data d")
    assert (args["weights"], args["data_dir"]) == ("w.pth", "d")


def test_segment_pretrained_flag_reads_the_published_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRNET_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("DRNET_WEIGHTS_MIRROR", raising=False)
    rc = main(["segment", "eval", str(tmp_path), "--model", "drn_d_22", "--pretrained",
               "--device", "cpu", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "drn_d_22_cityscapes.pth not found" in err, err
    rc = main(["segment", "eval", str(tmp_path), "--weights", "w.pth", "--pretrained"])
    assert rc == 2 and "not both" in capsys.readouterr().err


# -- logging -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, level",
    [([], logging.INFO), (["--quiet"], logging.WARNING), (["--debug"], logging.DEBUG)],
)
def test_main_installs_one_stderr_handler_with_the_level(flags, level, capsys, monkeypatch):
    import drnet.cli as cli

    logger = logging.getLogger("drnet")
    seen = []

    def command(parser, args) -> int:
        ours = [h for h in logger.handlers if type(h).__name__ == "_StderrHandler"]
        seen.append((len(ours), logger.level))
        logging.getLogger("drnet.tasks.x").info("bare message")
        logging.getLogger("drnet.tasks.x").warning("a warning")
        return 0

    monkeypatch.setattr(cli, "_run", command)
    main([*flags, "data"])
    main([*flags, "data"])  # a second run never stacks a second handler
    assert seen == [(1, level), (1, level)]
    # after a run the library's logging is as the caller had it (no handler left behind)
    assert not [h for h in logger.handlers if type(h).__name__ == "_StderrHandler"]
    err = capsys.readouterr().err
    assert (err.count("bare message\n") == 2) == (level <= logging.INFO)
    assert err.count("a warning\n") == 2 and "WARNING" not in err and "drnet.tasks" not in err


def test_quiet_and_debug_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["--quiet", "--debug", "data"])


# -- --json: one meaning --------------------------------------------------------------------------


def test_json_alone_prints_json_and_json_path_writes_it(tmp_path, capsys):
    assert main(["models", "drn_d_22", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["drn_d_22"]
    assert main(["models", "drn_d_22", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "drn_d_22" in out.splitlines()[1] and f"wrote {tmp_path / 'm.json'}" in out
    assert json.loads((tmp_path / "m.json").read_text()) == rows


def test_data_check_json_alone_prints_the_report(tmp_path, capsys):
    from helpers import make_list_dataset

    root = make_list_dataset(tmp_path / "d", n_train=2, n_val=1, size=16)
    assert main(["data", "check", str(root), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["files_checked"] > 0


def test_documented_command_lines_use_the_canonical_flags():
    """The command lines of README.md and of every page under docs/."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    assert len(pages) > 10
    joined = []
    for page in pages:
        lines, start = page.read_text().splitlines(), len(joined)
        for line in lines:
            if len(joined) > start and joined[-1][1].endswith("\\"):
                joined[-1] = (page.name, joined[-1][1][:-1] + " " + line.strip())
            elif line.startswith(("drnet ", "torchrun ")):
                joined.append((page.name, line))
    assert len(joined) > 40
    assert {"README.md", "segmentation.md", "localization.md"} <= {name for name, _ in joined}
    for name, command in joined:
        tokens = set(command.split("#")[0].split())
        assert not tokens & RETIRED, (name, command)
