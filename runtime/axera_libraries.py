"""Why pyaxengine finds no NPU runtime, seen from the shell our commands run in (not a login shell).

pyaxengine looks for Axera's libraries as axengine/_providers.py does: `ctypes.util.find_library("axcl_rt")`
for a PCIe/M.2 card (AXCL), `"ax_engine"` on an AX650 board, and `/dev/axcl_host` for the card's driver.
find_library reads the loader's cache (ldconfig) and LD_LIBRARY_PATH. AXCL's axcl_host package puts its
libraries in /usr/lib/axcl and its guide says `source /etc/profile`: a login shell's LD_LIBRARY_PATH that
the non-login shells of SSH commands, systemd units and Dask workers never get.
"""

from __future__ import annotations

import ctypes.util
import glob
import os

AXCL_LIB_DIR = "/usr/lib/axcl"  # axcl_host's install script: axcl_lib_path=/usr/lib/axcl
AXCL_DEVICE = "/dev/axcl_host"  # pyaxengine's _AXCL_HOST_DEVICE: the card's driver is loaded


def diagnose() -> str:
    """One sentence: what is missing and the command that fixes it ("" when nothing is found wrong)."""
    card, board = ctypes.util.find_library("axcl_rt"), ctypes.util.find_library("ax_engine")
    if card and not os.path.exists(AXCL_DEVICE):
        return (
            f"the AXCL runtime is installed but {AXCL_DEVICE} is missing: the card's driver is not loaded "
            "(check `lspci` for Device 0650 and `axcl-smi`; reinstall axcl_host for this kernel, or reboot)"
        )
    if card or board:
        return ""
    if glob.glob(f"{AXCL_LIB_DIR}/libaxcl_rt.so*"):
        return (
            f"libaxcl_rt.so is in {AXCL_LIB_DIR}, but the loader does not find it outside a login shell (AXCL sets "
            f"LD_LIBRARY_PATH in /etc/profile only): run `echo {AXCL_LIB_DIR} | sudo tee /etc/ld.so.conf.d/axcl.conf "
            "&& sudo ldconfig` on the device"
        )
    return (
        "neither AXCL's libaxcl_rt (an M.2/PCIe card: install the axcl_host package) nor libax_engine (an AX650 "
        "board's BSP) is on this device"
    )
