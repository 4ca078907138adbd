//! The bpf(2) commands the bind guard uses, through `libc::syscall`, each
//! with its `union bpf_attr` member as a `#[repr(C)]` struct laid out as
//! in include/uapi/linux/bpf.h.
//!
//! Each struct holds the leading fields a command needs, with the explicit
//! padding the C layout has; [`bpf`] passes it in a zeroed buffer the size
//! of the whole union.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::insn::Insn;
use super::program::{GuardKey, GuardValue};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_MAP_UPDATE_BATCH: libc::c_int = 26;
const BPF_MAP_DELETE_BATCH: libc::c_int = 27;
const BPF_LINK_CREATE: libc::c_int = 28;

const BPF_MAP_TYPE_HASH: u32 = 1;
/// Allocate hash entries on insert, not all `max_entries` up front.
pub(crate) const BPF_F_NO_PREALLOC: u32 = 1;
pub(crate) const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub(crate) const BPF_CGROUP_INET4_BIND: u32 = 8;
pub(crate) const BPF_CGROUP_INET6_BIND: u32 = 9;
/// MAP_UPDATE_ELEM flag: create or replace.
pub(crate) const BPF_ANY: u64 = 0;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MapBatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    pad: u32,
}

/// The size of the attr buffer passed to every command: larger than the
/// kernel's `union bpf_attr` (about 150 bytes in 6.18). Some commands write
/// results back at fixed offsets whatever size was passed (BPF_PROG_QUERY
/// writes `query.revision` at offset 56 on recent kernels), so the buffer
/// must cover the whole union; the kernel accepts a longer attr whose
/// extra bytes are zero.
const ATTR_SIZE: usize = 256;

#[repr(C, align(8))]
struct AttrBuf([u8; ATTR_SIZE]);

/// bpf(cmd, attr): `attr` copied into a zeroed ATTR_SIZE buffer, the call
/// made, and the buffer's leading bytes copied back into `attr` (out
/// fields). Returns the non-negative result or errno.
///
/// # Safety
/// `T` must be the attr struct of `cmd` (a `repr(C)` struct of integers
/// without implicit padding), and every pointer inside it must be valid
/// for the kernel to read (or write, for out buffers) during the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = std::mem::size_of::<T>();
    assert!(size <= ATTR_SIZE, "attr larger than the buffer");
    let mut buf = AttrBuf([0; ATTR_SIZE]);
    // SAFETY: `attr` is a live T of `size` initialised bytes (no implicit
    // padding, per the caller); the buffer is ATTR_SIZE >= size bytes.
    unsafe {
        std::ptr::copy_nonoverlapping((attr as *const T).cast::<u8>(), buf.0.as_mut_ptr(), size)
    };
    // SAFETY: the buffer is a writable, 8-aligned ATTR_SIZE-byte attr
    // whose leading bytes are the caller's attr for `cmd` (valid embedded
    // pointers, per the caller) and whose tail is zero.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            buf.0.as_mut_ptr().cast::<libc::c_void>(),
            ATTR_SIZE as libc::c_uint,
        )
    };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    };
    // SAFETY: copies `size` bytes back into the live, exclusively borrowed
    // `attr`; any bit pattern is a valid value of an integer-only struct.
    unsafe { std::ptr::copy_nonoverlapping(buf.0.as_ptr(), (attr as *mut T).cast::<u8>(), size) };
    result
}

/// Wraps a descriptor the kernel just returned.
fn owned_fd(rc: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) returned a fresh descriptor (rc >= 0) that nothing
    // else owns; bpf descriptors are always O_CLOEXEC.
    unsafe { OwnedFd::from_raw_fd(rc as libc::c_int) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // 15 bytes at most: the kernel wants a NUL-terminated name of
    // [A-Za-z0-9_.] characters.
    for (d, s) in out.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    out
}

/// The guard's hash map: made only by [`guard_map_create`], so its key
/// and value types are [`GuardKey`] and [`GuardValue`].
#[derive(Debug)]
pub(crate) struct GuardMap(OwnedFd);

impl GuardMap {
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
}

/// BPF_MAP_CREATE of a guard map: a hash of GuardKey → GuardValue.
pub(crate) fn guard_map_create(
    max_entries: u32,
    map_flags: u32,
    name: &str,
) -> io::Result<GuardMap> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: std::mem::size_of::<GuardKey>() as u32,
        value_size: std::mem::size_of::<GuardValue>() as u32,
        max_entries,
        map_flags,
        map_name: name16(name),
        ..Default::default()
    };
    // SAFETY: MapCreateAttr is BPF_MAP_CREATE's attr and holds no pointers.
    unsafe { bpf(BPF_MAP_CREATE, &mut attr) }
        .map(owned_fd)
        .map(GuardMap)
}

/// BPF_MAP_UPDATE_BATCH of `keys[i]` → `values[i]` (Linux 5.6): one
/// system call for many entries. Returns how many were written, in
/// order, and the error that stopped it, if any.
///
/// `map` must be a guard map (from [`guard_map_create`]): the kernel
/// reads its key and value sizes from it.
pub(crate) fn map_update_batch(
    map: &GuardMap,
    keys: &[GuardKey],
    values: &[GuardValue],
) -> (usize, Option<io::Error>) {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut attr = MapBatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.0.as_raw_fd() as u32,
        elem_flags: BPF_ANY,
        ..Default::default()
    };
    // SAFETY: MapBatchAttr is the batch attr; the kernel reads `count`
    // keys and values from the two live slices, of the map's own key and
    // value types (a GuardMap is only made by guard_map_create), and
    // writes back only `count`.
    let result = unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) };
    (attr.count as usize, result.err())
}

/// BPF_MAP_DELETE_BATCH of `keys`. The kernel stops at the first key that
/// is absent; this resumes after it. Returns how many were deleted.
pub(crate) fn map_delete_batch(map: &GuardMap, keys: &[GuardKey]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = MapBatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: map.0.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: as in map_update_batch; the kernel reads only keys.
        let result = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        let done = (attr.count as usize).min(rest.len());
        deleted += done;
        match result {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[done + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// BPF_MAP_LOOKUP_ELEM of `key`; None when absent.
pub(crate) fn map_lookup(map: &GuardMap, key: &GuardKey) -> io::Result<Option<GuardValue>> {
    let mut value = GuardValue::default();
    let mut attr = MapElemAttr {
        map_fd: map.0.as_raw_fd() as u32,
        key: key as *const GuardKey as u64,
        value: &mut value as *mut GuardValue as u64,
        ..Default::default()
    };
    // SAFETY: MapElemAttr is the map-element attr; the kernel reads
    // key_size bytes from the live `key` and writes value_size bytes into
    // `value`, a live, exclusively borrowed GuardValue: the map's value
    // type, since a GuardMap is only made by guard_map_create.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A refused BPF_PROG_LOAD: the errno and the verifier's log.
#[derive(Debug)]
pub(crate) struct LoadError {
    pub(crate) error: io::Error,
    pub(crate) log: String,
}

/// BPF_PROG_LOAD. Tries without a log first (a log costs time and, on
/// older kernels, a too-small buffer fails a valid load); on failure
/// loads again with a 1 MiB level-1 log to say why.
pub(crate) fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    name: &str,
) -> Result<OwnedFd, LoadError> {
    const LICENSE: &[u8] = b"Dual MIT/GPL\0";
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_name: name16(name),
            expected_attach_type,
            ..Default::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: ProgLoadAttr is BPF_PROG_LOAD's attr; `insns`, the
        // license and the log buffer outlive the call, and log_size is the
        // buffer's length, so the kernel writes within it.
        unsafe { bpf(BPF_PROG_LOAD, &mut attr) }.map(owned_fd)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut buf = vec![0u8; 1 << 20];
            match attempt(Some(&mut buf)) {
                // Loaded the second time (a transient failure): keep it.
                Ok(fd) => Ok(fd),
                Err(error) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    let log = String::from_utf8_lossy(&buf[..end]).trim().to_owned();
                    let error = if error.raw_os_error() == first.raw_os_error() {
                        error
                    } else {
                        first
                    };
                    Err(LoadError { error, log })
                }
            }
        }
    }
}

/// BPF_LINK_CREATE of `prog` on the cgroup directory `cgroup` (flags 0: a
/// cgroup link is always attached as BPF_F_ALLOW_MULTI).
pub(crate) fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    // SAFETY: LinkCreateAttr is the leading part of BPF_LINK_CREATE's
    // attr and holds no pointers.
    unsafe { bpf(BPF_LINK_CREATE, &mut attr) }.map(owned_fd)
}

/// BPF_PROG_QUERY: how many programs are attached directly to `cgroup`
/// for `attach_type` (not counting its ancestors').
pub(crate) fn prog_query_count(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<u32> {
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    // SAFETY: ProgQueryAttr is the leading part of BPF_PROG_QUERY's attr;
    // prog_ids is null and prog_cnt 0, so the kernel writes only prog_cnt
    // and attach_flags back into the struct.
    unsafe { bpf(BPF_PROG_QUERY, &mut attr) }?;
    Ok(attr.prog_cnt)
}
