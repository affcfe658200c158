#!/usr/bin/env bash
# The SEV-SNP reference value a release can compute offline, for its manifest
# (docs/ATTESTATION.md, "From measurement to source"): scripts/snp-reference.sh BINARY OUT.
#
# An SNP launch digest binds a guest's code only when the firmware measures the kernel, the
# initrd and the command line it boots: OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc, whose
# metadata has an SNP_KERNEL_HASHES section. Debian's `ovmf` package (bookworm's 2022.11,
# trixie's 2025.02 too) is built from OvmfPkgX64 only: sev-snp-measure refuses a kernel with
# it ("OVMF metadata doesn't include SNP_KERNEL_HASHES section"). So this computes the digest
# of Debian's firmware alone, for a documented guest shape, and writes it as *incomplete*
# (never accepted: any kernel booted by that firmware would report it), with what is missing
# and how an operator completes it. OUT is a JSON array for `tee-risk release manifest
# --incomplete`.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$1
out=$2
tools=target/release-tools
inputs=target/release-inputs
VCPUS=2
VCPU_TYPE=EPYC-v4
SEV_SNP_MEASURE=0.0.13

if [[ ! -x $tools/bin/sev-snp-measure ]]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "sev-snp-measure==$SEV_SNP_MEASURE"
fi
mkdir -p "$inputs"
if ! ls "$inputs"/ovmf_*.deb > /dev/null 2>&1; then
  (cd "$inputs" && apt-get download -q ovmf 2> /dev/null)
fi
deb=$(ls "$inputs"/ovmf_*.deb | head -1)
version=$(dpkg-deb -f "$deb" Version)
rm -rf "$inputs/ovmf" && dpkg-deb -x "$deb" "$inputs/ovmf"
firmware=$inputs/ovmf/usr/share/ovmf/OVMF.fd
digest=$("$tools/bin/sev-snp-measure" --mode snp --vcpus $VCPUS --vcpu-type $VCPU_TYPE \
  --ovmf "$firmware" --output-format hex)
# The proof that the kernel cannot be bound with this firmware, kept in the manifest.
refusal=$("$tools/bin/sev-snp-measure" --mode snp --vcpus $VCPUS --vcpu-type $VCPU_TYPE \
  --ovmf "$firmware" --kernel "$binary" --initrd "$binary" --append console=ttyS0 2>&1 || true)
refusal=$(printf '%s' "$refusal" | tail -1)

DIGEST=$digest VERSION=$version REFUSAL=$refusal VCPUS=$VCPUS VCPU_TYPE=$VCPU_TYPE \
  TOOL="sev-snp-measure $SEV_SNP_MEASURE (PyPI), --mode snp" \
  FIRMWARE_SHA256=$(sha256sum "$firmware" | cut -d' ' -f1) \
  BINARY_SHA256=$(sha256sum "$binary" | cut -d' ' -f1) \
  python3 - "$out" <<'EOF'
import json, os, sys
e = os.environ
json.dump([{
    "tee": "snp",
    "partial": e["DIGEST"],
    "inputs": {
        "firmware": {"debian_package": "ovmf " + e["VERSION"], "file": "/usr/share/ovmf/OVMF.fd",
                     "sha256": e["FIRMWARE_SHA256"]},
        "vcpus": int(e["VCPUS"]), "vcpu_type": e["VCPU_TYPE"], "vmm": "QEMU",
        "guest_features": "0x1", "tool": e["TOOL"], "binary_sha256": e["BINARY_SHA256"],
    },
    "missing": (
        "This is the launch digest of Debian's firmware alone: it does not measure the kernel, "
        "the initrd holding this binary or the command line, so no verifier may accept it. "
        "sev-snp-measure, given a kernel with this firmware, says: " + e["REFUSAL"] + ". "
        "To complete it, an operator builds OVMF from edk2's OvmfPkg/AmdSev/AmdSevX64.dsc "
        "(which has that section), packs this binary into the guest's initrd, and runs "
        "sev-snp-measure --mode snp --vcpus " + e["VCPUS"] + " --vcpu-type " + e["VCPU_TYPE"] +
        " --ovmf OVMF.amdsev.fd --kernel vmlinuz --initrd initrd.img --append CMDLINE; the "
        "result goes into the policy's measurements with the SHA-256 of each input beside it "
        "(docs/ATTESTATION.md)."
    ),
}], open(sys.argv[1], "w"), indent=2)
EOF
echo "SEV-SNP firmware-only launch digest ($version, $VCPUS x $VCPU_TYPE): $digest"
