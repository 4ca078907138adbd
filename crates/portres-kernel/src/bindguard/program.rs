//! The bind guard's eBPF program, hand-assembled, and the layout of the
//! map it reads (key and holder record, shared with userspace).
//!
//! The same instructions are loaded twice, as `cgroup/bind4` and
//! `cgroup/bind6`: both hooks get a `struct bpf_sock_addr` whose
//! `user_port` and `protocol` fields sit at the same offsets, and bind6
//! also sees v4-mapped and dual-stack `[::]` binds. The reviewed source is
//! the C equivalent in `bindguard.c` next to this file; it is not compiled
//! (no clang at build time), so the two are kept in step by review, block
//! by block — each block below names the C lines it implements.

use super::insn::*;

/// `struct bpf_sock_addr` offsets (include/uapi/linux/bpf.h).
const CTX_USER_PORT: i16 = 24;
const CTX_PROTOCOL: i16 = 36;

/// Helper function ids (`___BPF_FUNC_MAPPER` order in include/uapi/linux/bpf.h).
pub(crate) const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
pub(crate) const HELPER_GET_CURRENT_PID_TGID: i32 = 14;
pub(crate) const HELPER_GET_CURRENT_UID_GID: i32 = 15;
pub(crate) const HELPER_GET_NETNS_COOKIE: i32 = 122;
pub(crate) const HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID: i32 = 123;
pub(crate) const HELPER_SET_RETVAL: i32 = 187;

const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
/// MPTCP sockets share TCP's port space (their subflows are TCP).
const IPPROTO_MPTCP: i32 = 262;
const EACCES: i32 = 13;

/// The map key: one guarded port of one protocol in one network namespace.
/// 16 bytes with the padding explicit and always zero, because the hash
/// map compares keys byte for byte (the program zeroes the same bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct GuardKey {
    /// `bpf_get_netns_cookie(ctx)`, the same number as `SO_NETNS_COOKIE`.
    pub(crate) netns_cookie: u64,
    /// The port, host byte order.
    pub(crate) port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub(crate) protocol: u8,
    pub(crate) pad: [u8; 5],
}

/// `GuardValue::flags` bits. All-zero flags mean "nobody but nobody": a
/// zeroed record never allows anyone (the lesson of systemd#30556).
pub(crate) const FLAG_TGID: u32 = 1;
pub(crate) const FLAG_UID: u32 = 2;
pub(crate) const FLAG_GID: u32 = 4;
pub(crate) const FLAG_CGROUP: u32 = 8;
/// Allowed binders skip the CAP_NET_BIND_SERVICE check (return 3).
pub(crate) const FLAG_NO_CAP: u32 = 16;

/// The map value: who may bind the key's port. 32 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct GuardValue {
    pub(crate) flags: u32,
    pub(crate) tgid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) cgroup_id: u64,
    pub(crate) cgroup_level: u32,
    pub(crate) pad: u32,
}

const VALUE_FLAGS: i16 = 0;
const VALUE_TGID: i16 = 4;
const VALUE_UID: i16 = 8;
const VALUE_GID: i16 = 12;
const VALUE_CGROUP_ID: i16 = 16;
const VALUE_CGROUP_LEVEL: i16 = 24;

/// How a refused bind fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyErrno {
    /// `bpf_set_retval(-EACCES)` then 0: what Windows answers (WSAEACCES).
    Eacces,
    /// Plain 0: kernels whose bind hooks cannot call `bpf_set_retval`.
    Eperm,
}

/// The program, for the map whose descriptor is `map_fd`.
pub(crate) fn bind_program(map_fd: i32, deny: DenyErrno) -> Vec<Insn> {
    let mut a = Asm::new();
    let allow = a.label();
    let grant = a.label();
    let proto_ok = a.label();
    let check_ids = a.label();
    let check_gid = a.label();
    let check_cgroup = a.label();
    let deny_label = a.label();

    // r6 = ctx;  __u32 port = bpf_ntohs(ctx->user_port);
    a.emit([
        mov64_reg(R6, R1),
        ldx_mem(BPF_W, R7, R6, CTX_USER_PORT),
        be16(R7),
    ]);
    // if (port == 0) return 1;
    a.jmp_imm(BPF_JEQ, R7, 0, allow);

    // __u32 proto = ctx->protocol;
    // if (proto == IPPROTO_MPTCP) proto = IPPROTO_TCP;
    // if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) return 1;
    a.emit([ldx_mem(BPF_W, R8, R6, CTX_PROTOCOL)]);
    let not_mptcp = a.label();
    a.jmp_imm(BPF_JNE, R8, IPPROTO_MPTCP, not_mptcp);
    a.emit([mov64_imm(R8, IPPROTO_TCP)]);
    a.place(not_mptcp);
    a.jmp_imm(BPF_JEQ, R8, IPPROTO_TCP, proto_ok);
    a.jmp_imm(BPF_JNE, R8, IPPROTO_UDP, allow);
    a.place(proto_ok);

    // struct guard_key key = { .port = port, .protocol = proto };  (pad = 0)
    // The second 8 bytes of the key as one little-endian word:
    // port | protocol << 16, all other bytes zero. (Little-endian hosts
    // only: the guard refuses to load on big-endian ones.)
    a.emit([
        alu64_imm(BPF_LSH, R8, 16),
        alu64_reg(BPF_OR, R8, R7),
        stx_mem(BPF_DW, R10, R8, -8),
    ]);
    // key.netns_cookie = bpf_get_netns_cookie(ctx);
    a.emit([
        mov64_reg(R1, R6),
        call(HELPER_GET_NETNS_COOKIE),
        stx_mem(BPF_DW, R10, R0, -16),
    ]);
    // struct holder *h = bpf_map_lookup_elem(&guarded_ports, &key);
    a.emit(ld_map_fd(R1, map_fd));
    a.emit([
        mov64_reg(R2, R10),
        alu64_imm(BPF_ADD, R2, -16),
        call(HELPER_MAP_LOOKUP_ELEM),
    ]);
    // if (!h) return 1;
    a.jmp_imm(BPF_JEQ, R0, 0, allow);
    // r7 = h;  __u32 flags = h->flags;
    // int grant = (flags & FLAG_NO_CAP) ? 3 : 1;
    a.emit([
        mov64_reg(R7, R0),
        ldx_mem(BPF_W, R8, R7, VALUE_FLAGS),
        mov64_imm(R9, 1),
        mov64_reg(R1, R8),
        alu64_imm(BPF_AND, R1, FLAG_NO_CAP as i32),
    ]);
    let no_cap_done = a.label();
    a.jmp_imm(BPF_JEQ, R1, 0, no_cap_done);
    a.emit([mov64_imm(R9, 3)]);
    a.place(no_cap_done);

    // if ((flags & FLAG_TGID) && bpf_get_current_pid_tgid() >> 32 == h->tgid)
    //     return grant;
    a.emit([mov64_reg(R1, R8), alu64_imm(BPF_AND, R1, FLAG_TGID as i32)]);
    a.jmp_imm(BPF_JEQ, R1, 0, check_ids);
    a.emit([
        call(HELPER_GET_CURRENT_PID_TGID),
        alu64_imm(BPF_RSH, R0, 32),
        ldx_mem(BPF_W, R1, R7, VALUE_TGID),
    ]);
    a.jmp_reg(BPF_JEQ, R0, R1, grant);

    // if (flags & (FLAG_UID | FLAG_GID)) {
    //     __u64 ug = bpf_get_current_uid_gid();
    //     if ((flags & FLAG_UID) && (__u32)ug == h->uid) return grant;
    //     if ((flags & FLAG_GID) && ug >> 32 == h->gid) return grant;
    // }
    a.place(check_ids);
    a.emit([
        mov64_reg(R1, R8),
        alu64_imm(BPF_AND, R1, (FLAG_UID | FLAG_GID) as i32),
    ]);
    a.jmp_imm(BPF_JEQ, R1, 0, check_cgroup);
    a.emit([
        call(HELPER_GET_CURRENT_UID_GID),
        mov64_reg(R6, R0), // ctx is no longer needed
        mov64_reg(R1, R8),
        alu64_imm(BPF_AND, R1, FLAG_UID as i32),
    ]);
    a.jmp_imm(BPF_JEQ, R1, 0, check_gid);
    a.emit([mov32_reg(R1, R6), ldx_mem(BPF_W, R2, R7, VALUE_UID)]);
    a.jmp_reg(BPF_JEQ, R1, R2, grant);
    a.place(check_gid);
    a.emit([mov64_reg(R1, R8), alu64_imm(BPF_AND, R1, FLAG_GID as i32)]);
    a.jmp_imm(BPF_JEQ, R1, 0, check_cgroup);
    a.emit([
        mov64_reg(R1, R6),
        alu64_imm(BPF_RSH, R1, 32),
        ldx_mem(BPF_W, R2, R7, VALUE_GID),
    ]);
    a.jmp_reg(BPF_JEQ, R1, R2, grant);

    // if ((flags & FLAG_CGROUP) &&
    //     bpf_get_current_ancestor_cgroup_id(h->cgroup_level) == h->cgroup_id)
    //     return grant;
    a.place(check_cgroup);
    a.emit([
        mov64_reg(R1, R8),
        alu64_imm(BPF_AND, R1, FLAG_CGROUP as i32),
    ]);
    a.jmp_imm(BPF_JEQ, R1, 0, deny_label);
    a.emit([
        ldx_mem(BPF_W, R1, R7, VALUE_CGROUP_LEVEL),
        call(HELPER_GET_CURRENT_ANCESTOR_CGROUP_ID),
        ldx_mem(BPF_DW, R1, R7, VALUE_CGROUP_ID),
    ]);
    a.jmp_reg(BPF_JEQ, R0, R1, grant);

    // bpf_set_retval(-EACCES);  (the EACCES variant only)
    // return 0;
    a.place(deny_label);
    if deny == DenyErrno::Eacces {
        a.emit([mov64_imm(R1, -EACCES), call(HELPER_SET_RETVAL)]);
    }
    a.emit([mov64_imm(R0, 0), exit()]);

    // grant: return grant;
    a.place(grant);
    a.emit([mov64_reg(R0, R9), exit()]);
    // allow: return 1;
    a.place(allow);
    a.emit([mov64_imm(R0, 1), exit()]);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(std::mem::size_of::<GuardKey>(), 16);
        assert_eq!(std::mem::size_of::<GuardValue>(), 32);
        assert_eq!(std::mem::offset_of!(GuardKey, port), 8);
        assert_eq!(std::mem::offset_of!(GuardKey, protocol), 10);
        assert_eq!(std::mem::offset_of!(GuardValue, tgid) as i16, VALUE_TGID);
        assert_eq!(std::mem::offset_of!(GuardValue, uid) as i16, VALUE_UID);
        assert_eq!(std::mem::offset_of!(GuardValue, gid) as i16, VALUE_GID);
        assert_eq!(
            std::mem::offset_of!(GuardValue, cgroup_id) as i16,
            VALUE_CGROUP_ID
        );
        assert_eq!(
            std::mem::offset_of!(GuardValue, cgroup_level) as i16,
            VALUE_CGROUP_LEVEL
        );
    }

    #[test]
    fn the_key_word_the_program_stores_matches_the_struct() {
        // The program stores `port | protocol << 16` as the key's second
        // 8 bytes; the struct must have the same bytes there.
        let key = GuardKey {
            netns_cookie: 0,
            port: 0x1f90,
            protocol: 6,
            pad: [0; 5],
        };
        // SAFETY: GuardKey is repr(C), 16 bytes of plain integers without
        // implicit padding (checked above), so viewing it as bytes is sound.
        let bytes: [u8; 16] = unsafe { std::mem::transmute(key) };
        let word = 0x1f90u64 | (6u64 << 16);
        assert_eq!(bytes[8..], word.to_le_bytes());
    }

    #[test]
    fn both_variants_assemble() {
        let eacces = bind_program(3, DenyErrno::Eacces);
        let eperm = bind_program(3, DenyErrno::Eperm);
        assert_eq!(eacces.len(), eperm.len() + 2);
        assert!(eacces.len() < 80);
    }
}
