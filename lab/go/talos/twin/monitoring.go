package main

// The monitoring calls (`talosctl stats`-style dashboards, `talosctl dashboard`, and Talos's own
// MonitoringSuite) read the running kernel's /proc and /sys
// (internal/app/machined/internal/server/v1alpha1/v1alpha1_monitoring.go). A twin's kernel is the
// box host's, so the CPU, load and scheduler figures are that kernel's, read with the same
// procfs package Talos uses; the network devices are those of the twin's own namespace (its port
// on the box's LAN and its loopback). Its disks are the ones its hardware file declares: they
// carry no I/O (what the twin writes lands on the host's disk), so their counters stay zero.

import (
	"context"

	"github.com/prometheus/procfs"
	"github.com/prometheus/procfs/sysfs"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/protobuf/types/known/emptypb"
)

// fromProc reads one of the running kernel's /proc files with procfs.
func fromProc[T any](read func(procfs.FS) (T, error)) (T, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		var none T

		return none, err
	}

	return read(fs)
}

// LoadAvg: /proc/loadavg.
func (c *configured) LoadAvg(context.Context, *emptypb.Empty) (*machine.LoadAvgResponse, error) {
	load, err := fromProc(procfs.FS.LoadAvg)
	if err != nil {
		return nil, err
	}

	return &machine.LoadAvgResponse{Messages: []*machine.LoadAvg{{
		Metadata: c.metadata(), Load1: load.Load1, Load5: load.Load5, Load15: load.Load15,
	}}}, nil
}

// cpuStat is one line of /proc/stat's CPU times as the API carries it.
func cpuStat(times procfs.CPUStat) *machine.CPUStat {
	return &machine.CPUStat{
		User: times.User, Nice: times.Nice, System: times.System, Idle: times.Idle, Iowait: times.Iowait,
		Irq: times.IRQ, SoftIrq: times.SoftIRQ, Steal: times.Steal, Guest: times.Guest, GuestNice: times.GuestNice,
	}
}

// SystemStat: /proc/stat, one CPU entry per core index.
func (c *configured) SystemStat(context.Context, *emptypb.Empty) (*machine.SystemStatResponse, error) {
	stat, err := fromProc(procfs.FS.Stat)
	if err != nil {
		return nil, err
	}

	cores := make([]*machine.CPUStat, 0, len(stat.CPU))
	for index := range int64(len(stat.CPU)) {
		cores = append(cores, cpuStat(stat.CPU[index]))
	}

	softIRQ := stat.SoftIRQ

	return &machine.SystemStatResponse{Messages: []*machine.SystemStat{{
		Metadata:        c.metadata(),
		BootTime:        stat.BootTime,
		CpuTotal:        cpuStat(stat.CPUTotal),
		Cpu:             cores,
		IrqTotal:        stat.IRQTotal,
		Irq:             stat.IRQ,
		ContextSwitches: stat.ContextSwitches,
		ProcessCreated:  stat.ProcessCreated,
		ProcessRunning:  stat.ProcessesRunning,
		ProcessBlocked:  stat.ProcessesBlocked,
		SoftIrqTotal:    stat.SoftIRQTotal,
		SoftIrq: &machine.SoftIRQStat{
			Hi: softIRQ.Hi, Timer: softIRQ.Timer, NetTx: softIRQ.NetTx, NetRx: softIRQ.NetRx, Block: softIRQ.Block,
			BlockIoPoll: softIRQ.BlockIoPoll, Tasklet: softIRQ.Tasklet, Sched: softIRQ.Sched, Hrtimer: softIRQ.Hrtimer, Rcu: softIRQ.Rcu,
		},
	}}}, nil
}

// CPUFreqStats: each CPU's cpufreq folder in /sys; a CPU without one (a VM's) reports zeros.
func (c *configured) CPUFreqStats(context.Context, *emptypb.Empty) (*machine.CPUFreqStatsResponse, error) {
	fs, err := sysfs.NewDefaultFS()
	if err != nil {
		return nil, err
	}

	cpus, err := fs.SystemCpufreq()
	if err != nil {
		return nil, err
	}

	stats := make([]*machine.CPUFreqStats, 0, len(cpus))

	for _, cpu := range cpus {
		stat := &machine.CPUFreqStats{Governor: cpu.Governor}
		if cpu.CpuinfoCurrentFrequency != nil && cpu.CpuinfoMinimumFrequency != nil && cpu.CpuinfoMaximumFrequency != nil {
			stat.CurrentFrequency = *cpu.CpuinfoCurrentFrequency
			stat.MinimumFrequency = *cpu.CpuinfoMinimumFrequency
			stat.MaximumFrequency = *cpu.CpuinfoMaximumFrequency
		}

		stats = append(stats, stat)
	}

	return &machine.CPUFreqStatsResponse{Messages: []*machine.CPUsFreqStats{{Metadata: c.metadata(), CpuFreqStats: stats}}}, nil
}

// CPUInfo: /proc/cpuinfo, a processor each.
func (c *configured) CPUInfo(context.Context, *emptypb.Empty) (*machine.CPUInfoResponse, error) {
	processors, err := fromProc(procfs.FS.CPUInfo)
	if err != nil {
		return nil, err
	}

	infos := make([]*machine.CPUInfo, 0, len(processors))
	for _, cpu := range processors {
		infos = append(infos, &machine.CPUInfo{
			Processor: uint32(cpu.Processor), VendorId: cpu.VendorID, CpuFamily: cpu.CPUFamily, Model: cpu.Model,
			ModelName: cpu.ModelName, Stepping: cpu.Stepping, Microcode: cpu.Microcode, CpuMhz: cpu.CPUMHz,
			CacheSize: cpu.CacheSize, PhysicalId: cpu.PhysicalID, Siblings: uint32(cpu.Siblings), CoreId: cpu.CoreID,
			CpuCores: uint32(cpu.CPUCores), ApicId: cpu.APICID, Flags: cpu.Flags, Bugs: cpu.Bugs, BogoMips: cpu.BogoMips,
			AddressSizes: cpu.AddressSizes,
		})
	}

	return &machine.CPUInfoResponse{Messages: []*machine.CPUsInfo{{Metadata: c.metadata(), CpuInfo: infos}}}, nil
}

// NetworkDeviceStats: /proc/net/dev of the twin's namespace.
func (c *configured) NetworkDeviceStats(context.Context, *emptypb.Empty) (*machine.NetworkDeviceStatsResponse, error) {
	devices, err := fromProc(procfs.FS.NetDev)
	if err != nil {
		return nil, err
	}

	netDev := func(line procfs.NetDevLine) *machine.NetDev {
		return &machine.NetDev{
			Name: line.Name, RxBytes: line.RxBytes, RxPackets: line.RxPackets, RxErrors: line.RxErrors, RxDropped: line.RxDropped,
			RxFifo: line.RxFIFO, RxFrame: line.RxFrame, RxCompressed: line.RxCompressed, RxMulticast: line.RxMulticast,
			TxBytes: line.TxBytes, TxPackets: line.TxPackets, TxErrors: line.TxErrors, TxDropped: line.TxDropped,
			TxFifo: line.TxFIFO, TxCollisions: line.TxCollisions, TxCarrier: line.TxCarrier, TxCompressed: line.TxCompressed,
		}
	}

	reply := &machine.NetworkDeviceStats{Metadata: c.metadata(), Total: netDev(devices.Total())}
	for _, device := range devices {
		reply.Devices = append(reply.Devices, netDev(device))
	}

	return &machine.NetworkDeviceStatsResponse{Messages: []*machine.NetworkDeviceStats{reply}}, nil
}

// DiskStats: the declared disks, with no I/O.
func (c *configured) DiskStats(context.Context, *emptypb.Empty) (*machine.DiskStatsResponse, error) {
	reply := &machine.DiskStats{Metadata: c.metadata(), Total: &machine.DiskStat{}}
	for _, disk := range c.hardware.Disks {
		reply.Devices = append(reply.Devices, &machine.DiskStat{Name: diskName(disk)})
	}

	return &machine.DiskStatsResponse{Messages: []*machine.DiskStats{reply}}, nil
}
