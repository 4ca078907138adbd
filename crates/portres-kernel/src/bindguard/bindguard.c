// The C equivalent of the bind guard's program (program.rs), for review.
//
// NOT COMPILED: portres loads the hand-assembled instructions of
// program.rs through bpf(2) and builds without clang. There is no object
// to check this file against; it and program.rs are kept in step by
// review, block by block (each block of program.rs quotes these lines).
// Loaded twice: as cgroup/bind4 (BPF_CGROUP_INET4_BIND) and as
// cgroup/bind6 (BPF_CGROUP_INET6_BIND; it also sees v4-mapped and [::]).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_MPTCP 262
#define EACCES 13

struct guard_key {
	__u64 netns_cookie; // bpf_get_netns_cookie(ctx) == SO_NETNS_COOKIE
	__u16 port;         // host byte order
	__u8 protocol;      // IPPROTO_TCP or IPPROTO_UDP
	__u8 pad[5];        // always zero: keys compare byte for byte
};

#define FLAG_TGID   1u  // tgid names the daemon
#define FLAG_UID    2u  // uid names the owner user
#define FLAG_GID    4u  // gid names the owner group (primary gid only)
#define FLAG_CGROUP 8u  // cgroup_id/cgroup_level name an exec session
#define FLAG_NO_CAP 16u // allowed binders skip CAP_NET_BIND_SERVICE

struct holder {         // all-zero: nobody may bind
	__u32 flags;
	__u32 tgid;
	__u32 uid;
	__u32 gid;
	__u64 cgroup_id;
	__u32 cgroup_level;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 2 * 65536);
	__type(key, struct guard_key);
	__type(value, struct holder);
} guarded_ports SEC(".maps");

SEC("cgroup/bind4") // and "cgroup/bind6", the same code
int portres_bind(struct bpf_sock_addr *ctx)
{
	__u32 port = bpf_ntohs(ctx->user_port);
	if (port == 0)
		return 1; // bind(port 0): the kernel's choice skips reserved ports

	__u32 proto = ctx->protocol;
	if (proto == IPPROTO_MPTCP)
		proto = IPPROTO_TCP;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 1;

	struct guard_key key = { .port = port, .protocol = proto };
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	struct holder *h = bpf_map_lookup_elem(&guarded_ports, &key);
	if (!h)
		return 1; // not guarded, or another network namespace's port

	__u32 flags = h->flags;
	int grant = (flags & FLAG_NO_CAP) ? 3 : 1;

	if ((flags & FLAG_TGID) && bpf_get_current_pid_tgid() >> 32 == h->tgid)
		return grant;
	if (flags & (FLAG_UID | FLAG_GID)) {
		__u64 ug = bpf_get_current_uid_gid(); // real ids, initial user ns
		if ((flags & FLAG_UID) && (__u32)ug == h->uid)
			return grant;
		if ((flags & FLAG_GID) && ug >> 32 == h->gid)
			return grant;
	}
	if ((flags & FLAG_CGROUP) &&
	    bpf_get_current_ancestor_cgroup_id(h->cgroup_level) == h->cgroup_id)
		return grant;

	bpf_set_retval(-EACCES); // left out where the verifier refuses it: EPERM
	return 0;
}

char _license[] SEC("license") = "Dual MIT/GPL"; // GPL-compatible, as the kernel asks
