"""The paper's tables and figures from run folders (`mimic-report`)."""
