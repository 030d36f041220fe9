#!/bin/sh
# Stage 01 by hand: what `talos-bootstrap apply` runs for this cluster.
set -eu

# 1. The cluster's secrets (CAs, tokens): once, ever. Keep the file safe; never commit it.
talosctl gen secrets --output-file secrets.yaml

# 2. A base config per role, with the patch every node gets.
talosctl gen config talos-ha https://172.16.16.100:6443 --with-secrets secrets.yaml --talos-version v1.12 --kubernetes-version 1.35.0 --install-image factory.talos.dev/metal-installer/613e1592b2da41ae5e265e8789429f22e121aab91cb4deb6bc3c0b6262961245:v1.12.1 --additional-sans 172.16.16.100,172.16.16.147,172.16.16.148,172.16.16.149 --config-patch @patches/all-nodes.yaml --config-patch-control-plane @patches/control-planes.yaml --with-docs=false --with-examples=false --force --output-types controlplane,worker --output .

# 3. Each node's own patch on top, then validation for bare metal.
mkdir -p configs
talosctl machineconfig patch controlplane.yaml --patch @patches/cp01.yaml --output configs/cp01.yaml
talosctl validate --config configs/cp01.yaml --mode metal --strict
talosctl machineconfig patch controlplane.yaml --patch @patches/cp02.yaml --output configs/cp02.yaml
talosctl validate --config configs/cp02.yaml --mode metal --strict
talosctl machineconfig patch controlplane.yaml --patch @patches/cp03.yaml --output configs/cp03.yaml
talosctl validate --config configs/cp03.yaml --mode metal --strict
talosctl machineconfig patch worker.yaml --patch @patches/wk01.yaml --output configs/wk01.yaml
talosctl validate --config configs/wk01.yaml --mode metal --strict
talosctl machineconfig patch worker.yaml --patch @patches/wk02.yaml --output configs/wk02.yaml
talosctl validate --config configs/wk02.yaml --mode metal --strict
talosctl machineconfig patch worker.yaml --patch @patches/wk03.yaml --output configs/wk03.yaml
talosctl validate --config configs/wk03.yaml --mode metal --strict

# 4. The client config: endpoints are the control planes, never the VIP.
talosctl gen config talos-ha https://172.16.16.100:6443 --with-secrets secrets.yaml --talos-version v1.12 --kubernetes-version 1.35.0 --install-image factory.talos.dev/metal-installer/613e1592b2da41ae5e265e8789429f22e121aab91cb4deb6bc3c0b6262961245:v1.12.1 --additional-sans 172.16.16.100,172.16.16.147,172.16.16.148,172.16.16.149 --output-types talosconfig --output talosconfig
talosctl --talosconfig talosconfig config endpoint 172.16.16.147 172.16.16.148 172.16.16.149
talosctl --talosconfig talosconfig config node 172.16.16.147

# 5. Upload the schematic: the Image Factory serves installers only for schematics it has
#    stored, and answers with the ID the configs name (613e1592b2da41ae5e265e8789429f22e121aab91cb4deb6bc3c0b6262961245).
curl -sSf -X POST --data-binary @schematic.yaml https://factory.talos.dev/schematics

# 6. Nodes booted from the ISO wait in maintenance mode, at the address DHCP gave them (reserve
#    the configured one for each MAC). Look before sending: exactly one port for the address
#    (get links), an install disk that is not the USB stick (get disks). Then send each its config.
talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 get links --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 get disks --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 apply-config --insecure --file configs/cp01.yaml
talosctl --talosconfig talosconfig --nodes 172.16.16.148 --endpoints 172.16.16.148 get links --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.148 --endpoints 172.16.16.148 get disks --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.148 --endpoints 172.16.16.148 apply-config --insecure --file configs/cp02.yaml
talosctl --talosconfig talosconfig --nodes 172.16.16.149 --endpoints 172.16.16.149 get links --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.149 --endpoints 172.16.16.149 get disks --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.149 --endpoints 172.16.16.149 apply-config --insecure --file configs/cp03.yaml
talosctl --talosconfig talosconfig --nodes 172.16.16.150 --endpoints 172.16.16.150 get links --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.150 --endpoints 172.16.16.150 get disks --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.150 --endpoints 172.16.16.150 apply-config --insecure --file configs/wk01.yaml
talosctl --talosconfig talosconfig --nodes 172.16.16.151 --endpoints 172.16.16.151 get links --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.151 --endpoints 172.16.16.151 get disks --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.151 --endpoints 172.16.16.151 apply-config --insecure --file configs/wk02.yaml
talosctl --talosconfig talosconfig --nodes 172.16.16.152 --endpoints 172.16.16.152 get links --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.152 --endpoints 172.16.16.152 get disks --insecure
talosctl --talosconfig talosconfig --nodes 172.16.16.152 --endpoints 172.16.16.152 apply-config --insecure --file configs/wk03.yaml

# 7. Each node installs and reboots (eject the ISO, or put the disk first in the boot order).
#    Wait until every control plane answers with its config.
until talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 version --short >/dev/null 2>&1; do echo 'waiting for cp01'; sleep 10; done
until talosctl --talosconfig talosconfig --nodes 172.16.16.148 --endpoints 172.16.16.148 version --short >/dev/null 2>&1; do echo 'waiting for cp02'; sleep 10; done
until talosctl --talosconfig talosconfig --nodes 172.16.16.149 --endpoints 172.16.16.149 version --short >/dev/null 2>&1; do echo 'waiting for cp03'; sleep 10; done

# 8. Start etcd on ONE control plane, ONCE. The others join it; a second bootstrap
#    would start a second, empty cluster. Talos answers FailedPrecondition until it is
#    ready, and AlreadyExists once etcd has data: ask again on the first, stop on the second.
until out=$(talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 bootstrap 2>&1); do
  case "$out" in *AlreadyExists*) echo 'already bootstrapped'; break ;; esac
  echo "not yet: $out"; sleep 5
done

# 9. An admin kubeconfig; it points at the VIP (https://172.16.16.100:6443).
talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 kubeconfig kubeconfig --force --merge=false

# 10. Wait for the workers, then until etcd, the control plane and every node are healthy.
until talosctl --talosconfig talosconfig --nodes 172.16.16.150 --endpoints 172.16.16.150 version --short >/dev/null 2>&1; do echo 'waiting for wk01'; sleep 10; done
until talosctl --talosconfig talosconfig --nodes 172.16.16.151 --endpoints 172.16.16.151 version --short >/dev/null 2>&1; do echo 'waiting for wk02'; sleep 10; done
until talosctl --talosconfig talosconfig --nodes 172.16.16.152 --endpoints 172.16.16.152 version --short >/dev/null 2>&1; do echo 'waiting for wk03'; sleep 10; done
talosctl --talosconfig talosconfig --nodes 172.16.16.147 --endpoints 172.16.16.147 health --control-plane-nodes 172.16.16.147,172.16.16.148,172.16.16.149 --worker-nodes 172.16.16.150,172.16.16.151,172.16.16.152 --wait-timeout 1200s
