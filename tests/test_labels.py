"""The label vocabulary: the 7-class rule and the two label CSV formats, with their errors."""

from __future__ import annotations

import pandas as pd
import pytest

from ichkit.labels import (
    CLASSES7,
    RSNA_LABELS,
    SUBTYPES,
    LabelFileError,
    normalize_image_id,
    read_rsna_long_labels,
    read_wide_labels,
    seven_class,
    seven_class_column,
)

# (any, set subtypes) -> 7-class label: the rule written out as a table
RULE_TABLE = [
    (0, [], "normal"),
    (1, ["epidural"], "epidural"),
    (1, ["subdural"], "subdural"),
    (1, ["subarachnoid"], "subarachnoid"),
    (1, ["intraparenchymal"], "intraparenchymal"),
    (1, ["intraventricular"], "intraventricular"),
    (1, ["epidural", "subdural"], "multi"),
    (1, ["subarachnoid", "intraventricular", "intraparenchymal"], "multi"),
    (1, list(SUBTYPES), "multi"),
]


@pytest.mark.parametrize("any_, positives, expected", RULE_TABLE)
def test_seven_class_rule_table(any_, positives, expected):
    subtypes = {s: int(s in positives) for s in SUBTYPES}
    assert seven_class(any_, subtypes) == expected
    frame = pd.DataFrame([{"any": any_, **subtypes}])
    assert seven_class_column(frame).tolist() == [expected]


def test_seven_class_column_covers_every_class_once_and_in_order():
    frame = pd.DataFrame([{"any": a, **{s: int(s in p) for s in SUBTYPES}} for a, p, _ in RULE_TABLE])
    assert seven_class_column(frame).tolist() == [e for _, _, e in RULE_TABLE]
    assert set(e for _, _, e in RULE_TABLE) == set(CLASSES7)


@pytest.mark.parametrize("any_, positives", [(0, ["subdural"]), (1, [])])
def test_inconsistent_any_is_refused(any_, positives):
    subtypes = {s: int(s in positives) for s in SUBTYPES}
    with pytest.raises(ValueError, match="any"):
        seven_class(any_, subtypes)
    with pytest.raises(ValueError, match="inconsistent"):
        seven_class_column(pd.DataFrame([{"any": any_, **subtypes}]))


def _write_long(path, rows):
    path.write_text("ID,Label\n" + "".join(f"{r}\n" for r in rows))
    return path


def _six(image_id, positives=()):
    return [f"{image_id}_{s},{int(s in positives or (s == 'any' and bool(positives)))}"
            for s in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")]


def test_long_labels_pivot_to_one_row_per_image(tmp_path):
    path = _write_long(tmp_path / "stage_2_train.csv", _six("ID_aa1", ["subdural"]) + _six("ID_bb2"))
    df = read_rsna_long_labels(path).set_index("image_id")
    assert list(df.columns) == list(RSNA_LABELS)
    assert df.loc["ID_aa1", "subdural"] == 1 and df.loc["ID_aa1", "any"] == 1 and df.loc["ID_aa1", "epidural"] == 0
    assert df.loc["ID_bb2"].sum() == 0


@pytest.mark.parametrize(
    "bad_row, line, message",
    [
        ("ID_cc3_hemorrhage,1", 8, "unknown subtype 'hemorrhage'"),
        ("ID_cc3_any", 8, "expected 2 fields"),
        ("ID_cc3_any,2", 8, "not 0 or 1"),
        ("cc3_any,1", 8, "not of the form ID_<sop>_<subtype>"),
        ("ID_aa1_any,1", 8, "duplicate row"),
    ],
)
def test_long_labels_errors_name_file_and_line(tmp_path, bad_row, line, message):
    path = _write_long(tmp_path / "labels.csv", _six("ID_aa1", ["epidural"]) + [bad_row])
    with pytest.raises(LabelFileError, match=message) as exc:
        read_rsna_long_labels(path)
    assert str(exc.value).startswith(f"{path}:{line}:")


def test_long_labels_missing_subtype_rows_are_an_error(tmp_path):
    path = _write_long(tmp_path / "labels.csv", _six("ID_aa1")[:5])
    with pytest.raises(LabelFileError, match=r"ID_aa1 lacks labels \['any'\]"):
        read_rsna_long_labels(path)


def test_line_numbers_survive_quoted_cells_that_span_lines(tmp_path):
    path = tmp_path / "hemorrhage-labels.csv"
    path.write_text('Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural\n'
                    '"ID_aa1",1,0,1,0,0,0\n'
                    '"ID_bb2\nnote",0,0,0,0,0,0\n'   # a quoted id cell spanning lines 3-4
                    '\n'
                    'ID_cc3,0,0,0,0,0\n')              # line 6: one field short
    with pytest.raises(LabelFileError) as exc:
        read_wide_labels(path)
    assert str(exc.value).startswith(f"{path}:6: expected 7 fields, got 6")


def test_wide_labels_normalise_ids_and_check_header(tmp_path):
    path = tmp_path / "hemorrhage-labels.csv"
    path.write_text("Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural\n"
                    "ID_aa1.jpg,1,0,1,0,0,0\nbb2,0,0,0,0,0,0\n")
    df = read_wide_labels(path).set_index("image_id")
    assert list(df.index) == ["ID_aa1", "ID_bb2"]
    assert df.loc["ID_aa1", "intraparenchymal"] == 1
    path.write_text("Image,any,epidural,intraparenchymal,intraventricular,subarachnoid\nID_aa1,1,0,1,0,0\n")
    with pytest.raises(LabelFileError, match=r":1: header lacks label columns \['subdural'\]"):
        read_wide_labels(path)
    path.write_text("Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural\n"
                    "ID_aa1,1,0,1,0,0,0\nID_bb2,0,0,0\n")
    with pytest.raises(LabelFileError, match=r":3: expected 7 fields, got 4"):
        read_wide_labels(path)


@pytest.mark.parametrize("raw, expected", [("ID_abc.jpg", "ID_abc"), (" abc.png ", "ID_abc"), ("ID_abc", "ID_abc"),
                                           ("ID_abc.dcm", "ID_abc")])
def test_normalize_image_id(raw, expected):
    assert normalize_image_id(raw) == expected


def test_binary_labels_leave_the_subtypes_unknown_and_errors_name_line_and_id(tmp_path):
    from ichkit.labels import read_binary_labels

    path = tmp_path / "labels.csv"
    path.write_text("id,hemorrhage\n001.png,1\n002.png,0\n")
    df = read_binary_labels(path, "id", "hemorrhage").set_index("image_id")
    assert df.loc["ID_001", "any"] == 1 and df.loc["ID_002", "any"] == 0
    assert df.loc["ID_001", list(SUBTYPES)].isna().all()  # unknown, not 0 and not "inconsistent"
    assert pd.isna(df.loc["ID_001", "label7"]) and df.loc["ID_002", "label7"] == "normal"
    path.write_text("id,hemorrhage\n001.png,1\n002.png,yes\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv:3: ID_002: label value 'yes'"):
        read_binary_labels(path, "id", "hemorrhage")


def test_an_inconsistent_wide_row_names_file_line_and_id(tmp_path):
    path = tmp_path / "hemorrhage-labels.csv"
    path.write_text("Image,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural\n"
                    "ID_a,0,0,0,0,0,0\nID_b,1,0,0,0,0,0\n")
    with pytest.raises(LabelFileError, match=r"hemorrhage-labels\.csv:3: ID_b: any=1 but no subtype"):
        read_wide_labels(path)


def test_an_inconsistent_long_label_image_names_the_line_of_its_first_row(tmp_path):
    path = tmp_path / "stage_2_train.csv"
    rows = ["ID,Label"] + [f"ID_a_{s},0" for s in RSNA_LABELS] + [f"ID_b_{s},{int(s == 'any')}" for s in RSNA_LABELS]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(LabelFileError, match=r"stage_2_train\.csv:8: ID_b: any=1 but no subtype"):
        read_rsna_long_labels(path)
    path.write_text("\n".join(rows[:10]) + "\n")
    with pytest.raises(LabelFileError, match=r"stage_2_train\.csv:8: image ID_b lacks labels"):
        read_rsna_long_labels(path)
