"""Tiny dataset folders in each dataset's official layout, with the known quirks.

Each ``make_<dataset>(root, n)`` writes ``n`` clean clips (labels cycling over
three classes so a head can learn them from label-dependent features) plus a
few rows with the format's quirks, and returns what a recipe must report.
Media files are a few bytes: recipes and ``manifest check`` only need them to
exist (features are imported, not extracted, in these tests).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np


def touch(path: Path, data: bytes = b"\x00\x00\x00\x18ftypmp42") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data + path.name.encode())  # distinct bytes -> distinct fingerprints
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


SPLITS = ("train", "train", "train", "valid", "test")


# ----------------------------------------------------------------------------- MMSA-style


def make_chsims2(root: Path, n: int = 30) -> dict:
    header = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
    classes = [("Negative", -0.6), ("Neutral", 0.0), ("Positive", 0.8)]
    rows = []
    for k in range(n):
        vid, cid = f"aqgy3_{k // 5:04d}", f"{k % 5:05d}"
        ann, val = classes[k % 3]
        rows.append([vid, cid, f"句子{k}", val, val, round(val / 2, 2), val, ann, SPLITS[k % 5]])
        touch(root / "Raw" / vid / f"{cid}.mp4")
    # quirks
    rows.append(["aqgy3_0100", "7", "编号不同", 0.2, 0.2, 0.2, 0.2, "Positive", "train"])  # file is 00007.mp4
    touch(root / "Raw" / "aqgy3_0100" / "00007.mp4")
    rows.append(["aqgy3_0101", "00000", "没有视频", 0.4, 0.4, 0.4, 0.4, "Positive", "train"])  # no media
    rows.append(["aqgy3_0102", "00000", "坏标签", "abc", 0, 0, 0, "Neutral", "train"])  # unparseable
    touch(root / "Raw" / "aqgy3_0102" / "00000.mp4")
    rows.append(["aqgy3_0103", "00000", "超出范围", 1.6, 0, 0, 0, "Positive", "test"])  # out of [-1, 1]
    touch(root / "Raw" / "aqgy3_0103" / "00000.mp4")
    rows.append(list(rows[0]))  # duplicate
    touch(root / "Raw" / "aqgy3_0999" / "00000.mp4")  # media without a label row
    touch(root / "Raw" / "aqgy3_0000" / "._00000.mp4")  # macOS resource fork: ignored
    write_csv(root / "label.csv", header, rows)
    return {"written": n + 1, "read": n + 5, "dropped": 4,
            "counts": {"duplicate_id": 1, "id_mismatch": 1, "missing_media": 1, "unparseable_row": 2,
                       "unlabelled_media": 3}}  # 0102, 0103 (dropped rows) and 0999


def make_mosei(root: Path, n: int = 30) -> dict:
    header = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
    classes = [("Negative", -2.0), ("Neutral", 0.0), ("Positive", 2.4)]
    rows = []
    for k in range(n):
        vid, cid = f"-3g5yACwYnA{k // 4}", str(k % 4)
        ann, val = classes[k % 3]
        rows.append([vid, cid, f"sentence number {k}", val, "", "", "", ann, SPLITS[k % 5]])
        touch(root / "Raw" / vid / f"{cid}.mp4")
    rows.append(["zzMissing", "0", "no video here", 1.0, "", "", "", "Positive", "train"])
    rows.append(["zzBad", "0", "bad split", 1.0, "", "", "", "Positive", "dev-test"])
    touch(root / "Raw" / "zzBad" / "0.mp4")
    write_csv(root / "label.csv", header, rows)
    return {"written": n, "read": n + 2, "dropped": 2,
            "counts": {"missing_media": 1, "unparseable_row": 1, "unlabelled_media": 1}}


# ----------------------------------------------------------------------------- MELD


def make_meld(root: Path, n: int = 30) -> dict:
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
              "Season", "Episode", "StartTime", "EndTime"]
    emos = [("joy", "positive"), ("neutral", "neutral"), ("anger", "negative")]
    folders = {"train": "train/train_splits", "dev": "dev/dev_splits_complete",
               "test": "test/output_repeated_splits_test"}
    per: dict[str, list[list[object]]] = {"train": [], "dev": [], "test": []}
    for k in range(n):
        tag = ("train", "train", "train", "dev", "test")[k % 5]
        dia, utt = k // 3, k % 3
        emo, sent = emos[k % 3]
        per[tag].append([k + 1, f"I don\u2019t know, line {k}", "Ross", emo, sent, dia, utt, 4, 7,
                         "00:20:57,256", "00:21:00,049"])
        touch(root / "MELD.Raw" / folders[tag] / f"dia{dia}_utt{utt}.mp4")
    # quirks: a missing video (as in the real dev release), a bad id, a resource fork
    per["dev"].append([999, "Where is my video?", "Monica", "fear", "negative", 110, 7, 4, 7, "", ""])
    per["train"].append([998, "Broken id", "Joey", "joy", "positive", "x", 0, 4, 7, "", ""])
    touch(root / "MELD.Raw" / folders["train"] / "._dia0_utt0.mp4")
    for tag, rows in per.items():
        # the train CSV in Windows-1252, as some copies of the release are
        write_csv(root / f"{tag}_sent_emo.csv", header, rows, encoding="cp1252" if tag == "train" else "utf-8")
    return {"written": n, "read": n + 2, "dropped": 2,
            "counts": {"missing_media": 1, "unparseable_row": 1}}


# ----------------------------------------------------------------------------- IEMOCAP


def make_iemocap(root: Path, per_session: int = 8) -> dict:
    codes = ["ang", "hap", "exc", "neu", "sad", "fru", "xxx"]
    written = 0
    excluded = 0
    for s in range(1, 6):
        dialog = f"Ses0{s}F_impro01"
        sess = root / f"Session{s}"
        ev = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        tr = []
        for k in range(per_session):
            gender = "FM"[k % 2]
            utt = f"{dialog}_{gender}{k:03d}"
            code = codes[k % len(codes)]
            start = 1.5 + 3 * k
            ev += [f"[{start:.4f} - {start + 2.25:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 2.5000]",
                   f"C-E2:\tNeutral;\t()", f"A-E3:\tval 3; act 2; dom  2;\t()", ""]
            tr.append(f"{utt} [{start:08.4f}-{start + 2.25:08.4f}]: utterance {k} of session {s}.")
            touch(sess / "sentences" / "wav" / dialog / f"{utt}.wav", b"RIFF")
            if code in ("fru", "xxx"):
                excluded += 1
            else:
                written += 1
        if s == 2:  # quirks: a malformed line, a missing wav, a turn missing from the transcript
            ev.append("[12.0 - ]\tSes02F_impro01_F900\tneu\t[2.5, 2.5, 2.5]")
            ev.append(f"[90.0000 - 92.0000]\t{dialog}_M901\tneu\t[2.5000, 2.5000, 2.5000]")
            ev.append(f"[93.0000 - 95.0000]\t{dialog}_F902\tsad\t[2.0000, 2.0000, 2.0000]")
            touch(sess / "sentences" / "wav" / dialog / f"{dialog}_F902.wav", b"RIFF")
            written += 1
        (sess / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (sess / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(ev) + "\n")
        (sess / "dialog" / "EmoEvaluation" / "Categorical").mkdir(exist_ok=True)
        (sess / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (sess / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr) + "\n")
    return {"written": written, "excluded": excluded, "dropped": 2,
            "counts": {"missing_media": 1, "unparseable_row": 1, "missing_text": 1}}


# ----------------------------------------------------------------------------- DFEW


def make_dfew(root: Path, n: int = 40) -> dict:
    split = root / "EmoLabel_DataSplit"
    labels = {i: (1, 3, 4)[i % 3] for i in range(1, n + 1)}  # happy, neutral, angry
    for k in range(1, 6):
        test = [[i, labels[i]] for i in labels if (i - 1) % 5 == k - 1]
        train = [[i, labels[i]] for i in labels if (i - 1) % 5 != k - 1]
        if k == 2:
            test.append([1, labels[1]])  # clip 1 is already in the test set of fold 1
            test.append([n + 1, 9])  # label outside 1..7
        if k == 3:
            test.append([n + 2, 2])  # its video is missing
        write_csv(split / "test(single-labeled)" / f"set_{k}.csv", ["video_name", "label"], test)
        write_csv(split / "train(single-labeled)" / f"set_{k}.csv", ["video_name", "label"], train)
    for i in range(1, n + 1):
        touch(root / "Clip" / "original" / f"{i:05d}.mp4")  # zero-padded: every id matched loosely
    return {"written": n, "dropped": 3,
            "counts": {"fold_conflict": 1, "id_mismatch": n, "missing_media": 1, "unparseable_row": 1}}


# ----------------------------------------------------------------------------- MER2025


def make_mer2025(root: Path, n: int = 30) -> dict:
    classes = ["happy", "neutral", "angry"]
    train, test, subs = [], [], []
    for k in range(n):
        name = f"sample_{k:08d}"
        (test if k % 5 == 4 else train).append([name, classes[k % 3], (-2.0, 0.0, 2.5)[k % 3]])
        subs.append([name, f"中文字幕{k}", f"English subtitle {k}"])
        touch(root / "video" / f"{name}.mp4")
        touch(root / "audio" / f"{name}.wav", b"RIFF")
    train.append(["sample_nosub", "sad", -1.0])  # no subtitle row: kept, reported
    touch(root / "video" / "sample_nosub.mp4")
    train.append(["sample_badclass", "confused", 0.0])  # not one of the six classes
    train.append(["sample_nomedia", "happy", 1.0])  # no video, no audio
    write_csv(root / "track1_train_disdim.csv", ["name", "discrete", "valence"], train)
    write_csv(root / "track1_test_dis.csv", ["name", "discrete", "valence"], test)
    write_csv(root / "subtitle_chieng.csv", ["name", "chinese", "english"], subs + [["sample_nomedia", "无", "none"]])
    return {"written": n + 1, "dropped": 2,
            "counts": {"missing_media": 1, "missing_text": 1, "unparseable_row": 1}}


MAKERS = {"chsims2": make_chsims2, "mosei": make_mosei, "meld": make_meld, "iemocap": make_iemocap,
          "dfew": make_dfew, "mer2025": make_mer2025}


def label_features(clip_ids: list[str], labels: list[str], dim: int = 16, seed: int = 0,
                   seq: bool = True) -> dict[str, np.ndarray]:
    """Features a linear head can learn: a class-dependent mean plus small noise."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    centers = rng.standard_normal((len(classes), dim)).astype(np.float32) * 3
    out = {}
    for i, (cid, lab) in enumerate(zip(clip_ids, labels)):
        t = 1 + i % 4
        noise = rng.standard_normal((t, dim)).astype(np.float32) * 0.3
        arr = centers[classes.index(lab)] + noise
        out[cid] = arr if seq else arr.mean(axis=0)
    return out


def write_npy_folder(folder: Path, feats: dict[str, np.ndarray]) -> Path:
    from clmer_features.interop import encode_name

    folder.mkdir(parents=True, exist_ok=True)
    for cid, arr in feats.items():
        np.save(folder / f"{encode_name(cid)}.npy", arr)
    return folder
