"""The report's comparison of budgets and of raw / re-centred forms (dfcvae.budgets, report.table1_order)."""
import torch

from dfcvae import budgets, report


def test_other_form_shift():
    codes = torch.tensor([[1.0, 3.0], [3.0, 5.0]])
    form, shift = budgets.other_form_shift({}, codes)
    assert form == "recentred" and torch.equal(shift, torch.tensor([2.0, 4.0]))
    form, shift = budgets.other_form_shift({"recentred": {"offset_norm": 1.0, "offset": [0.5, -1.0]}}, codes)
    assert form == "raw" and torch.equal(shift, torch.tensor([-0.5, 1.0]))
    assert budgets.other_form_shift({"recentred": {"offset_norm": 3.0}}, codes) == ("raw", None)


def test_trajectory_face_rates(tmp_path):
    (tmp_path / "trajectory_vae345.csv").write_text(
        "step,lr,kl,mean_norm,half_m2,active,face_paper,face_released,log_kl,log_rec\n"
        "1000,0.0005,1,1,1,100,0.25,0.5,1,1\n12715,3e-05,1,1,1,100,0.26,0.371,1,1\n")
    assert budgets.trajectory_face_rates(tmp_path, "vae345", 12715) == {"paper": 0.26, "released": 0.371}
    assert budgets.trajectory_face_rates(tmp_path, "vae345", 2340) is None
    assert budgets.trajectory_face_rates(tmp_path, "pvae", 12715) is None


def test_change_lines_name_each_budget_and_what_moved():
    labels = {"vae123": "VAE-123", "vae123@2340": "VAE-123 (2,340 steps)", "pvae": "PVAE"}
    info = {"vae123": {"step": 12715, "final_kl": 80.0}, "vae123@2340": {"step": 2340, "final_kl": 94.3},
            "pvae": {"step": 12715}}
    averages = {"VAE-123": 87.5, "VAE-123 (2,340 steps)": 87.1, "PVAE": 86.3}
    quality = {k: {"samples (paper)": {"sharpness": v, "fd_ONet": 10 * v}} for k, v in
               (("vae123", 0.3), ("vae123@2340", 0.1))}
    faces = {"vae123": {"paper": {"raw": 0.6, "recentred": 0.9}},
             "vae123@2340": {"paper": {"raw": 0.4, "recentred": None}}}
    (line,) = budgets.change_lines(labels, averages, quality, faces, info)  # PVAE has no baseline: no line
    assert line.startswith("- VAE-123, 2,340 → 12,715 steps: Table 1 average 87.10 → 87.50 (+0.40)")
    assert "faces (paper, raw) 40.0% → 60.0%" in line and "faces (paper, re-centred) — → 90.0%" in line
    assert "sample sharpness (paper) 0.10 → 0.30" in line and "final KL / sample 94.3 → 80.0" in line


def test_table1_order_says_whether_the_papers_order_holds():
    labels = {"pvae": "PVAE", "vae123": "VAE-123", "vae345": "VAE-345"}
    avg = {"majority": 80.0, "PVAE": 86.0, "VAE-123": 87.0, "VAE-345": 88.0}
    line = report.table1_order(avg, labels, list(labels))
    assert line.startswith("majority 80.00 < PVAE 86.00 < VAE-123 87.00 < VAE-345 88.00") and "**not**" not in line
    assert "**not**" not in report.table1_order(dict(avg, **{"VAE-345": 87.0}), labels, list(labels))  # ≥ holds
    assert "**not**" in report.table1_order(dict(avg, PVAE=87.5), labels, list(labels))
    assert "**not**" not in report.table1_order(avg, labels, ["pvae", "vae345"])  # only the models present


def test_table1_order_of_baseline_models():
    labels = {"pvae@2340": "PVAE (2,340 steps)", "vae123@2340": "VAE-123 (2,340 steps)"}
    avg = {"majority": 80.0, "PVAE (2,340 steps)": 86.0, "VAE-123 (2,340 steps)": 85.0}
    line = report.table1_order(avg, labels, ["vae123@2340", "pvae@2340"])
    assert line.startswith("majority 80.00 < VAE-123 (2,340 steps) 85.00 < PVAE (2,340 steps) 86.00") and "**not**" in line
