# Sourced by the bench scripts that run the reference implementation:
# sets OFA_REPO to a checkout of mit-han-lab/once-for-all (the given one,
# else a shallow clone into $1) and installs what its `ofa` package imports
# (torch, torchvision, Pillow) when missing.
reference_env() {
  if [ -z "${OFA_REPO:-}" ]; then
    OFA_REPO=$1/once-for-all
    [ -d "$OFA_REPO/ofa" ] || git clone --depth 1 https://github.com/mit-han-lab/once-for-all "$OFA_REPO"
  fi
  # The reference package imports torchvision and Pillow at import time.
  python3 -c "import torch, torchvision, PIL" 2>/dev/null ||
    python3 -m pip install --quiet torch torchvision pillow
}
