"""One rule for people and dates, with the style named at each use."""

from app.core.names import NameStyle, approximate_ml, display_date, person_name


def test_list_style_is_family_first_as_a_study_list_shows_it():
    assert person_name("DOE^JOHN^^DR", NameStyle.LIST) == "DOE, JOHN"
    assert person_name("ANON", NameStyle.LIST) == "ANON"
    assert person_name("DOE^", NameStyle.LIST) == "DOE"
    assert person_name("^JOHN", NameStyle.LIST) == "JOHN"


def test_full_style_names_a_person_in_running_text():
    assert person_name("Doe^John^Q^Dr^Jr", NameStyle.FULL) == "Dr John Q Doe Jr"
    assert person_name("Doe^John", NameStyle.FULL) == "John Doe"
    assert person_name("Jane Reader", NameStyle.FULL) == "Jane Reader"


def test_only_the_first_component_group_is_shown():
    assert person_name("Yamada^Tarou=山田^太郎=やまだ^たろう", NameStyle.FULL) == "Tarou Yamada"
    assert person_name("Yamada^Tarou=山田^太郎", NameStyle.LIST) == "Yamada, Tarou"


def test_the_viewer_and_the_report_name_the_same_patient_from_one_rule():
    from app.report.export.text import render_text  # noqa: F401 - the report imports the same function
    from app.viewer import viewport

    assert viewport.person_name is person_name


def test_dates():
    assert display_date("20240131") == "2024-01-31"
    assert display_date("") == ""
    assert display_date(" 20240131 ") == "2024-01-31"
    assert display_date("2024") == "2024"


def test_a_window_has_one_display_name_whoever_named_it():
    """Issue #20.8: a header's "SOFT TISSUE" and the preset's "soft tissue" show as "Soft tissue"."""
    from app.core.names import window_name
    from app.dicom.model import Window
    from app.dicom.presets import CT_PRESETS
    from app.viewer.viewport import window_label

    assert window_name("SOFT TISSUE") == window_name("soft tissue") == window_name("Soft Tissue") == "Soft tissue"
    assert window_name("temporal_bone") == "Temporal bone" and window_name("400/40") == "400/40"
    header, preset = Window(400, 40, "SOFT TISSUE"), Window(400, 40, "soft tissue")
    assert window_label(header) == window_label(preset) == "W 400  L 40 (Soft tissue)"
    assert [window_name(w.name) for w in CT_PRESETS[:3]] == ["Soft tissue", "Lung", "Liver"]


def test_box_labels_have_one_form():
    from app.core.names import box_label

    assert box_label("AI", 1, "lesion", "green") == "AI 1 · lesion · green"
    assert box_label("You", 4, "nodule") == "You 4 · nodule"
    assert box_label("AI", 2, "hypodense lesion in the right hepatic lobe near the dome") \
        == "AI 2 · hypodense lesion in the right h…"


def test_an_approximate_volume_is_written_to_two_significant_figures():
    assert [approximate_ml(v) for v in (50.06, 12.59, 4.37, 1.0, 0.063, 0.004)] == [
        "50 mL", "13 mL", "4.4 mL", "1.0 mL", "0.06 mL", "0.00 mL"]
