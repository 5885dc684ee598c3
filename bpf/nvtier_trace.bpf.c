// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
// nvtier file-access tracer: which image files does a container touch while
// it cold-starts?
//
// Attach points need no tracefs (fentry/kprobes are refused on the target
// kernels, and a fresh host has no tracefs mounted):
// - tp_btf sys_exit: open/openat/openat2 returns; the opened file, resolved
//   through overlayfs to the real (layer) inode;
// - tp_btf sys_enter: file-backed mmap (resolved the same way) and the stat
//   family (the path string and dirfd; user space resolves it against the
//   image's layers, because a stat has no file);
// - tp_btf sched_process_exec: the executed file;
// - tp_btf mm_filemap_add_to_page_cache: every page the kernel reads into
//   the page cache, keyed by the real inode. This catches what the syscall
//   view misses: the ELF interpreter the kernel maps at exec, script
//   interpreters, files reached through another hardlinked name, opens
//   relative to a directory fd.
// The same syscalls can also be attached as per-syscall tracepoints
// (syscalls:sys_exit_openat, ...), which libbpf resolves through tracefs;
// those programs are kept for the attach-cost benchmark and for hosts
// where they are preferred (NVTIER_BPF_ATTACH=tracepoint). Only one set is
// loaded at a time.
//
// Events are filtered in the kernel and go to user space through a ring
// buffer with batched wake-ups. Two filters, chosen before load:
// - by cgroup v2 id (`nvtier trace`: the probe runs in a cgroup of its own);
// - by the root of the task (`nvtier serve`, `by_root`): a task whose root
//   directory is on an overlayfs superblock is a container's. The first
//   access from a new root is reported (EV_ROOT) and recording starts at
//   once, so nothing between a container's pivot_root and user space's
//   decision is lost; user space then keeps recording that root or marks it
//   ignored (a fresh profile, a mount that is not nvtier's), after which
//   its accesses cost one map lookup. Host processes, whose root is not an
//   overlay, never pass. A root is its mount's unique id (`mnt_id_unique`,
//   Linux 6.8+, never reused): a superblock's anonymous device number is
//   reused as soon as the overlay is unmounted, and the next container
//   would inherit the previous one's decision.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define OVERLAYFS_SUPER_MAGIC 0x794c7630
#define MAP_ANONYMOUS 0x20
#define AT_EMPTY_PATH 0x1000

#define KIND_OPEN 1
#define KIND_EXEC 2
#define KIND_MMAP 4
#define KIND_STAT 8
#define KIND_READ 16

#define EV_INODE 1
#define EV_PATH 2
#define EV_ROOT 3

#define ROOT_RECORD 1
#define ROOT_IGNORE 2

#define PATH_MAX_LEN 256

/* x86_64 syscall numbers (the loader refuses other architectures). */
#define NR_OPEN 2
#define NR_STAT 4
#define NR_FSTAT 5
#define NR_LSTAT 6
#define NR_MMAP 9
#define NR_OPENAT 257
#define NR_NEWFSTATAT 262
#define NR_STATX 332
#define NR_OPENAT2 437
/* thread_info.status bit of a 32-bit (compat) syscall: other numbers. */
#define TS_COMPAT_BIT 0x0002

/* Wake user space only when this much data is waiting (batched wake-ups). */
#define WAKEUP_BYTES (64 * 1024)

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space before load. */
const volatile bool ovl_file_indirect = true; /* 6.13+: private_data is struct ovl_file */
const volatile bool by_root = false; /* filter by the task's root, not by cgroup */

struct inode_event {
	u32 type; /* EV_INODE, or EV_ROOT (ino 0, dev = the root's superblock) */
	u32 kind;
	u64 ts_ns;
	u64 cgroup_id; /* with by_root: the root (its mount's unique id) */
	u64 ino;
	u32 dev; /* kernel encoding: major << 20 | minor */
	u32 pid;
};

struct path_event {
	u32 type; /* EV_PATH */
	u32 kind;
	u64 ts_ns;
	u64 cgroup_id;
	s32 dfd;
	u32 pid;
	char path[PATH_MAX_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* cgroup v2 ids to trace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, u64);
	__type(value, u8);
} cgroups SEC(".maps");

/* by_root: the roots seen (the unique id of a task's root mount, whose
 * superblock is an overlay) and what to do with their accesses
 * (ROOT_RECORD, ROOT_IGNORE). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, u8);
} roots SEC(".maps");

/* Events dropped because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} lost SEC(".maps");

/* Inodes already reported by the page-cache tracepoint. */
struct inode_key {
	u64 ino;
	u64 dev;
	u64 group; /* cgroup id or root: each recording sees its first read */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct inode_key);
	__type(value, u8);
} seen_pages SEC(".maps");

struct sys_enter_args {
	u64 common;
	s64 nr;
	u64 args[6];
};

struct sys_exit_args {
	u64 common;
	s64 nr;
	s64 ret;
};

static __always_inline void count_lost(void);

static __always_inline void emit_root(u64 root, u32 dev)
{
	struct inode_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->type = EV_ROOT;
	e->kind = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = root;
	e->ino = 0;
	e->dev = dev;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	/* A new container: wake user space now. */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

static __always_inline bool traced_root(u64 *key)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct fs_struct *fs = BPF_CORE_READ(t, fs);
	if (!fs)
		return false;
	struct vfsmount *mnt = BPF_CORE_READ(fs, root.mnt);
	if (!mnt)
		return false;
	struct super_block *sb = BPF_CORE_READ(mnt, mnt_sb);
	if (!sb || BPF_CORE_READ(sb, s_magic) != OVERLAYFS_SUPER_MAGIC)
		return false;
	u32 dev = BPF_CORE_READ(sb, s_dev);
	/* struct mount embeds the vfsmount. */
	struct mount *m = (void *)mnt - bpf_core_field_offset(struct mount, mnt);
	u64 id = 0;
	if (bpf_core_field_exists(m->mnt_id_unique))
		id = BPF_CORE_READ(m, mnt_id_unique);
	if (!id)
		id = dev; /* before 6.8: the device (reused after unmount) */
	*key = id;
	u8 *st = bpf_map_lookup_elem(&roots, &id);
	if (st)
		return *st == ROOT_RECORD;
	u8 v = ROOT_RECORD;
	if (bpf_map_update_elem(&roots, &id, &v, BPF_NOEXIST) == 0)
		emit_root(id, dev);
	return true;
}

static __always_inline bool traced(u64 *cg)
{
	if (by_root)
		return traced_root(cg);
	u64 id = bpf_get_current_cgroup_id();
	*cg = id;
	return bpf_map_lookup_elem(&cgroups, &id) != NULL;
}

static __always_inline u64 flags_for_submit(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
									  : BPF_RB_NO_WAKEUP;
}

static __always_inline void count_lost(void)
{
	u32 k = 0;
	u64 *v = bpf_map_lookup_elem(&lost, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* The real (layer) file behind an overlayfs file, or the file itself. */
static __always_inline struct file *real_file(struct file *f)
{
	struct inode *inode = BPF_CORE_READ(f, f_inode);
	unsigned long magic = BPF_CORE_READ(inode, i_sb, s_magic);
	if (magic != OVERLAYFS_SUPER_MAGIC)
		return f;
	void *pd = BPF_CORE_READ(f, private_data);
	if (!pd)
		return f;
	if (ovl_file_indirect) {
		struct ovl_file *of = pd;
		struct file *rf = BPF_CORE_READ(of, realfile);
		return rf ? rf : f;
	}
	return (struct file *)pd;
}

static __always_inline void emit_file(struct file *f, u32 kind, u64 cg)
{
	if (!f)
		return;
	struct file *rf = real_file(f);
	struct inode *inode = BPF_CORE_READ(rf, f_inode);
	if (!inode)
		return;
	struct inode_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->type = EV_INODE;
	e->kind = kind;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cg;
	e->ino = BPF_CORE_READ(inode, i_ino);
	e->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_ringbuf_submit(e, flags_for_submit());
}

static __always_inline struct file *fd_file(s64 fd)
{
	if (fd < 0)
		return NULL;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
	struct files_struct *files = BPF_CORE_READ(t, files);
	if (!files)
		return NULL;
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if ((u64)fd >= max)
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline int on_open_exit(s64 ret)
{
	u64 cg;
	if (ret < 0 || !traced(&cg))
		return 0;
	emit_file(fd_file(ret), KIND_OPEN, cg);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct sys_exit_args *ctx) { return on_open_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct sys_exit_args *ctx) { return on_open_exit(ctx->ret); }

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct sys_exit_args *ctx) { return on_open_exit(ctx->ret); }

/* mmap(addr, len, prot, flags, fd, off) */
static __always_inline int on_mmap(s64 fd, u64 flags)
{
	u64 cg;
	if (fd < 0 || (flags & MAP_ANONYMOUS) || !traced(&cg))
		return 0;
	emit_file(fd_file(fd), KIND_MMAP, cg);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int enter_mmap(struct sys_enter_args *ctx)
{
	return on_mmap((s64)ctx->args[4], ctx->args[3]);
}

struct vma_ctx {
	u64 cg;
};

static long on_entry_vma(struct task_struct *task, struct vm_area_struct *vma, struct vma_ctx *c)
{
	/* vm_file of an overlay mapping is already the real (layer) file. */
	emit_file(vma->vm_file, KIND_MMAP, c->cg);
	return 0;
}

static __always_inline void emit_path(s32 dfd, const char *upath, u64 cg, u32 kind, bool kernel);

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	u64 cg;
	if (!traced(&cg))
		return 0;
	emit_file(BPF_CORE_READ(bprm, file), KIND_EXEC, cg);
	/* The name exec'd: for a script this is the script itself, which the
	 * kernel opened without a syscall (bprm->file is its interpreter). */
	emit_path(-100, BPF_CORE_READ(bprm, filename), cg, KIND_EXEC, true);
	/* The ELF interpreter is mapped by the kernel, not through mmap(2):
	 * the new program starts at its entry point, so the mapping that
	 * holds the start address is the interpreter (or the static binary
	 * itself). */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(p);
	if (regs) {
		u64 ip = BPF_CORE_READ(regs, ip);
		struct vma_ctx c = { .cg = cg };
		bpf_find_vma(p, ip, on_entry_vma, &c, 0);
	}
	return 0;
}

static __always_inline int on_page_cache(u64 ino, u32 dev)
{
	u64 cg;
	if (!traced(&cg))
		return 0;
	/* One event per page is too many: report each inode once. */
	struct inode_key k = { .ino = ino, .dev = dev, .group = cg };
	u8 one = 1;
	if (bpf_map_lookup_elem(&seen_pages, &k))
		return 0;
	bpf_map_update_elem(&seen_pages, &k, &one, BPF_ANY);
	struct inode_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	e->type = EV_INODE;
	e->kind = KIND_READ;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cg;
	e->ino = ino;
	e->dev = dev;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_ringbuf_submit(e, flags_for_submit());
	return 0;
}

SEC("tracepoint/filemap/mm_filemap_add_to_page_cache")
int on_page_cache_add(struct trace_event_raw_mm_filemap_op_page_cache *ctx)
{
	return on_page_cache(ctx->i_ino, ctx->s_dev);
}

SEC("tp_btf/mm_filemap_add_to_page_cache")
int BPF_PROG(btf_page_cache_add, struct folio *folio)
{
	struct address_space *mapping = folio->mapping;
	if (!mapping)
		return 0;
	struct inode *host = mapping->host;
	if (!host)
		return 0;
	return on_page_cache(host->i_ino, host->i_sb->s_dev);
}

static __always_inline void emit_path(s32 dfd, const char *upath, u64 cg, u32 kind, bool kernel)
{
	struct path_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->type = EV_PATH;
	e->kind = kind;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = cg;
	e->dfd = dfd;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	long n = kernel ? bpf_probe_read_kernel_str(e->path, sizeof(e->path), upath)
			: bpf_probe_read_user_str(e->path, sizeof(e->path), upath);
	if (n < 0)
		e->path[0] = 0;
	bpf_ringbuf_submit(e, flags_for_submit());
}

static __always_inline int stat_at(s32 dfd, const char *upath, u64 flags)
{
	u64 cg;
	if (!traced(&cg))
		return 0;
	char first = 0;
	bpf_probe_read_user(&first, 1, upath);
	if ((flags & AT_EMPTY_PATH) && first == 0) {
		emit_file(fd_file(dfd), KIND_STAT, cg);
		return 0;
	}
	emit_path(dfd, upath, cg, KIND_STAT, false);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_newfstatat")
int enter_newfstatat(struct sys_enter_args *ctx)
{
	return stat_at((s32)ctx->args[0], (const char *)ctx->args[1], ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_statx")
int enter_statx(struct sys_enter_args *ctx)
{
	return stat_at((s32)ctx->args[0], (const char *)ctx->args[1], ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_newstat")
int enter_newstat(struct sys_enter_args *ctx)
{
	return stat_at(-100, (const char *)ctx->args[0], 0);
}

SEC("tracepoint/syscalls/sys_enter_newlstat")
int enter_newlstat(struct sys_enter_args *ctx)
{
	return stat_at(-100, (const char *)ctx->args[0], 0);
}

SEC("tracepoint/syscalls/sys_enter_newfstat")
int enter_newfstat(struct sys_enter_args *ctx)
{
	u64 cg;
	if (!traced(&cg))
		return 0;
	emit_file(fd_file((s64)ctx->args[0]), KIND_STAT, cg);
	return 0;
}

/* --- The same syscalls through the raw syscall tracepoints (no tracefs). */

static __always_inline bool compat_task(void)
{
	struct task_struct *t = bpf_get_current_task_btf();
	if (!bpf_core_field_exists(t->thread_info.status))
		return false;
	return t->thread_info.status & TS_COMPAT_BIT;
}

/* tp_btf arguments are trusted kernel pointers: the registers are read
 * directly (CO-RE relocated), without a probe-read helper per field. These
 * programs run for every syscall on the host, so the untraced path is one
 * register read and a compare. */

SEC("tp_btf/sys_exit")
int BPF_PROG(btf_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	if (nr != NR_OPENAT && nr != NR_OPEN && nr != NR_OPENAT2)
		return 0;
	if (compat_task())
		return 0;
	return on_open_exit(ret);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(btf_sys_enter, struct pt_regs *regs, long id)
{
	switch (id) {
	case NR_MMAP:
	case NR_NEWFSTATAT:
	case NR_STATX:
	case NR_STAT:
	case NR_LSTAT:
	case NR_FSTAT:
		break;
	default:
		return 0;
	}
	if (compat_task())
		return 0;
	/* x86_64 syscall arguments: di, si, dx, r10, r8, r9. */
	u64 a0 = regs->di;
	u64 a1 = regs->si;
	switch (id) {
	case NR_MMAP:
		return on_mmap((s64)regs->r8, regs->r10);
	case NR_NEWFSTATAT:
		return stat_at((s32)a0, (const char *)a1, regs->r10);
	case NR_STATX:
		return stat_at((s32)a0, (const char *)a1, regs->dx);
	case NR_STAT:
	case NR_LSTAT:
		return stat_at(-100, (const char *)a0, 0);
	case NR_FSTAT: {
		u64 cg;
		if (!traced(&cg))
			return 0;
		emit_file(fd_file((s64)a0), KIND_STAT, cg);
		return 0;
	}
	}
	return 0;
}
