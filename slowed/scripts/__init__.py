"""Training scripts shipped in the package (as ``trl/scripts``): ``slowed-sft`` = `slowed.scripts.sft`."""
