"""`embedkit report` on a folder without finished run records: one line on stderr, exit 2 (issue
11)."""

from embedkit.cli import main


def test_report_on_a_folder_without_records_is_one_line_and_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "dfr" / "seed0").mkdir(parents=True)
    (runs / "dfr" / "seed0" / "record.json").write_text("{}")  # unfinished: no `done` marker
    assert main(["report", str(runs), "--out", str(tmp_path / "rep")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert str(runs) in err and "no run records" in err
    assert not (tmp_path / "rep" / "results.md").exists()
    assert main(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "rep")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
