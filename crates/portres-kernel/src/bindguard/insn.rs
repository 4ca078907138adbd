//! eBPF instructions written by hand: the encoding of `struct bpf_insn`
//! and small constructors named like the kernel's `BPF_*` macros
//! (include/linux/filter.h), plus an assembler with labels so jump offsets
//! are computed, never counted by hand.
//!
//! Only what the bind guard's program uses is here. Opcode values are from
//! include/uapi/linux/bpf_common.h and bpf.h.

/// One `struct bpf_insn`: 8 bytes, `code`, then the two 4-bit register
/// fields in one byte, a signed 16-bit offset and a signed 32-bit immediate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// A register, r0..r10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reg(u8);

pub(crate) const R0: Reg = Reg(0);
pub(crate) const R1: Reg = Reg(1);
pub(crate) const R2: Reg = Reg(2);
pub(crate) const R6: Reg = Reg(6);
pub(crate) const R7: Reg = Reg(7);
pub(crate) const R8: Reg = Reg(8);
pub(crate) const R9: Reg = Reg(9);
/// The read-only frame pointer.
pub(crate) const R10: Reg = Reg(10);

// Instruction classes.
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_STX: u8 = 0x03;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
// Sizes.
/// 32-bit word.
pub(crate) const BPF_W: u8 = 0x00;
/// 64-bit double word.
pub(crate) const BPF_DW: u8 = 0x18;
// Modes.
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
// Sources.
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
// ALU operations.
pub(crate) const BPF_ADD: u8 = 0x00;
pub(crate) const BPF_OR: u8 = 0x40;
pub(crate) const BPF_AND: u8 = 0x50;
pub(crate) const BPF_LSH: u8 = 0x60;
pub(crate) const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_END: u8 = 0xd0;
/// BPF_END direction: convert to big endian (on a little-endian host a
/// swap, on a big-endian host a truncation). ntohs is the same operation.
const BPF_TO_BE: u8 = 0x08;
// Jump operations.
pub(crate) const BPF_JEQ: u8 = 0x10;
pub(crate) const BPF_JNE: u8 = 0x50;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `src_reg` of an ld_imm64 whose immediate is a map file descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        // The bitfields `dst_reg:4, src_reg:4` are allocated from the
        // least significant bit on little-endian targets, from the most
        // significant on big-endian ones.
        let regs = if cfg!(target_endian = "little") {
            (src.0 << 4) | dst.0
        } else {
            (dst.0 << 4) | src.0
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }
}

/// `dst = imm` (64-bit, imm sign-extended).
pub(crate) fn mov64_imm(dst: Reg, imm: i32) -> Insn {
    Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, R0, 0, imm)
}

/// `dst = src` (64-bit).
pub(crate) fn mov64_reg(dst: Reg, src: Reg) -> Insn {
    Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
}

/// `dst = (u32) src` (the upper half zeroed).
pub(crate) fn mov32_reg(dst: Reg, src: Reg) -> Insn {
    Insn::new(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}

/// `dst op= imm` (64-bit), `op` one of BPF_ADD, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH.
pub(crate) fn alu64_imm(op: u8, dst: Reg, imm: i32) -> Insn {
    Insn::new(BPF_ALU64 | op | BPF_K, dst, R0, 0, imm)
}

/// `dst op= src` (64-bit).
pub(crate) fn alu64_reg(op: u8, dst: Reg, src: Reg) -> Insn {
    Insn::new(BPF_ALU64 | op | BPF_X, dst, src, 0, 0)
}

/// `dst = be16(dst)`: the low 16 bits byte-swapped from network order on
/// little-endian hosts, the rest zeroed (bpf_ntohs).
pub(crate) fn be16(dst: Reg) -> Insn {
    Insn::new(BPF_ALU | BPF_END | BPF_TO_BE, dst, R0, 0, 16)
}

/// `dst = *(size *)(src + off)`.
pub(crate) fn ldx_mem(size: u8, dst: Reg, src: Reg, off: i16) -> Insn {
    Insn::new(BPF_LDX | size | BPF_MEM, dst, src, off, 0)
}

/// `*(size *)(dst + off) = src`.
pub(crate) fn stx_mem(size: u8, dst: Reg, src: Reg, off: i16) -> Insn {
    Insn::new(BPF_STX | size | BPF_MEM, dst, src, off, 0)
}

/// `dst = map` (BPF_LD_MAP_FD): two instruction slots; the kernel replaces
/// the descriptor with the map's address at load time.
pub(crate) fn ld_map_fd(dst: Reg, map_fd: i32) -> [Insn; 2] {
    [
        Insn::new(
            BPF_LD | BPF_DW | BPF_IMM,
            dst,
            Reg(BPF_PSEUDO_MAP_FD),
            0,
            map_fd,
        ),
        Insn::new(0, R0, R0, 0, 0),
    ]
}

/// `r0 = helper(r1..r5)`; r1-r5 are clobbered, r6-r9 preserved.
pub(crate) fn call(helper: i32) -> Insn {
    Insn::new(BPF_JMP | BPF_CALL, R0, R0, 0, helper)
}

/// `return r0`.
pub(crate) fn exit() -> Insn {
    Insn::new(BPF_JMP | BPF_EXIT, R0, R0, 0, 0)
}

/// A jump target, resolved when the program is finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// Builds an instruction array; jumps name labels and their offsets are
/// filled in by [`Asm::finish`].
#[derive(Debug, Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    /// Where each label was placed (index of the next instruction).
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of every jump to patch.
    jumps: Vec<(usize, Label)>,
}

impl Asm {
    pub(crate) fn new() -> Asm {
        Asm::default()
    }

    /// Appends instructions.
    pub(crate) fn emit(&mut self, insns: impl IntoIterator<Item = Insn>) {
        self.insns.extend(insns);
    }

    /// A fresh, unplaced label.
    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `label` at the next instruction.
    pub(crate) fn place(&mut self, label: Label) {
        assert!(self.labels[label.0].is_none(), "label placed twice");
        self.labels[label.0] = Some(self.insns.len());
    }

    /// `if (dst op imm) goto target` (64-bit compare).
    pub(crate) fn jmp_imm(&mut self, op: u8, dst: Reg, imm: i32, target: Label) {
        self.jumps.push((self.insns.len(), target));
        self.insns
            .push(Insn::new(BPF_JMP | op | BPF_K, dst, R0, 0, imm));
    }

    /// `if (dst op src) goto target` (64-bit compare).
    pub(crate) fn jmp_reg(&mut self, op: u8, dst: Reg, src: Reg, target: Label) {
        self.jumps.push((self.insns.len(), target));
        self.insns
            .push(Insn::new(BPF_JMP | op | BPF_X, dst, src, 0, 0));
    }

    /// The program with every jump offset resolved. Panics on an unplaced
    /// label: a bug in the program builder, caught by the unit tests.
    pub(crate) fn finish(mut self) -> Vec<Insn> {
        for &(at, label) in &self.jumps {
            let target = self.labels[label.0].expect("every label is placed");
            let off = target as isize - (at as isize + 1);
            self.insns[at].off = i16::try_from(off).expect("jump within range");
        }
        self.insns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_kernel_macros() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        // BPF_MOV64_REG(BPF_REG_6, BPF_REG_1) = { 0xbf, dst 6, src 1 }
        let i = mov64_reg(R6, R1);
        assert_eq!((i.code, i.regs), (0xbf, 0x16));
        // BPF_LDX_MEM(BPF_W, BPF_REG_7, BPF_REG_6, 24) = 0x61
        let i = ldx_mem(BPF_W, R7, R6, 24);
        assert_eq!((i.code, i.regs, i.off), (0x61, 0x67, 24));
        // BPF_ENDIAN(BPF_TO_BE, BPF_REG_7, 16) = 0xdc
        assert_eq!(be16(R7).code, 0xdc);
        // BPF_LD_MAP_FD(BPF_REG_1, fd) = { 0x18, src 1 (pseudo), dst 1 }
        let [a, b] = ld_map_fd(R1, 7);
        assert_eq!((a.code, a.regs, a.imm), (0x18, 0x11, 7));
        assert_eq!(b, Insn::new(0, R0, R0, 0, 0));
        assert_eq!(call(1).code, 0x85);
        assert_eq!(exit().code, 0x95);
        assert_eq!(stx_mem(BPF_DW, R10, R8, -8).code, 0x7b);
    }

    #[test]
    fn jump_offsets_count_from_the_next_instruction() {
        let mut asm = Asm::new();
        let end = asm.label();
        let start = asm.label();
        asm.place(start);
        asm.jmp_imm(BPF_JEQ, R1, 0, end); // 0 -> 3: off 2
        asm.emit([mov64_imm(R0, 1), exit()]);
        asm.place(end);
        asm.emit([mov64_imm(R0, 0)]);
        asm.jmp_imm(BPF_JNE, R0, 0, start); // 4 -> 0: off -5
        let p = asm.finish();
        assert_eq!(p[0].off, 2);
        assert_eq!(p[4].off, -5);
    }
}
