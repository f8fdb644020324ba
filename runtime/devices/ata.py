"""The IDE/ATA controller: one channel (the primary: 0x1F0-0x1F7, 0x3F6, IRQ 14), master and slave.

What is modelled is what an ATA/ATAPI-6 hard disk shows a PIO driver through the task-file
registers:

- the command block (data, error/features, sector count, LBA low/mid/high, device/head,
  status/command) and the control block (alternate status / device control). Both devices
  latch every command-block and device-control write, as both sit on the same cable; only the
  device the DEV bit selects answers reads and executes commands.
- PIO data transfers through the 16-bit data register, 32-bit accesses being two 16-bit cycles
  (the PIIX's 32-bit PIO); an 8-bit access is one 16-bit cycle of which the host keeps the low
  byte.
- commands: IDENTIFY DEVICE, READ/WRITE SECTORS, READ/WRITE MULTIPLE with SET MULTIPLE MODE
  (blocks of up to 16 sectors, 16 at power-on as on QEMU's drives),
  READ VERIFY SECTORS, SEEK, RECALIBRATE, SET FEATURES (write cache, read look-ahead, PIO
  transfer modes, reverting to defaults), FLUSH CACHE, INITIALIZE DEVICE PARAMETERS (CHS
  translation), EXECUTE DEVICE DIAGNOSTIC, the power commands (IDLE/STANDBY [IMMEDIATE], CHECK
  POWER MODE); NOP, IDENTIFY PACKET DEVICE and every other command abort (ERR, ABRT), IDENTIFY
  PACKET DEVICE after loading the ATA signature. Addresses are LBA28 or CHS; an address past the
  end is IDNF with the failing sector in the address registers; a sector count of 0 means 256.
- interrupts: INTRQ follows the selected device's pending interrupt unless nIEN; a device asks
  for one when a data block is ready (read), accepted (write) or a command ends (the last block
  of a read ends without one, as the protocol says); reading Status (not Alternate Status) or
  writing a command clears it. The IrqLine is driven as a level, as the PIIX passes INTRQ to
  the ISA IRQ 14 input.
- software reset (SRST in Device Control): BSY while it is held, then the ATA signature (sector
  count 1, LBA low 1, LBA mid/high 0, error 01h = diagnostics passed), DRDY and DSC, device 0
  selected, no interrupt.
- absent devices: a missing slave lets the master answer for it with status and error 00h (so
  BSY and DRDY are clear and a probe finds nothing), commands to it are ignored; with no device
  at all every register reads 00h (the DD7 pull-down the ATA spec asks of the host, QEMU's
  value). Writes while the selected device has BSY or DRQ set are ignored (device control
  excepted), as QEMU does.
- the write cache (on at power-on, SET FEATURES 02h/82h): with it a written block is in the
  image file when the drive accepts it and on the host's disk after FLUSH CACHE; without it
  each block is synced before it is accepted.
- host I/O errors on the image: a failed read is UNC (uncorrectable data), a failed write is DF
  (device fault) with ABRT.
- the PIIX3 IDE function's decode enable (`decoding`, driven by pci.Piix3Ide): off, the ports
  float as an empty bus (reads all ones, writes dropped) and INTRQ is not passed on.

Timing is instant: a command's data is ready before the guest's next register read, so BSY is
never seen except during SRST. Not modelled: DMA (IDENTIFY advertises none, so drivers use PIO),
LBA48, ATAPI, security, SMART, the secondary channel, the drive address register at 0x3F7 (its
bit 7 belongs to the floppy controller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ring1.runtime.devices.bus import Bus
from ring1.runtime.devices.disk import SECTOR_SIZE, DiskImage
from ring1.runtime.devices.irq import IrqLine

# The legacy primary channel's places on a PC.
PRIMARY_COMMAND_BASE = 0x1F0
PRIMARY_CONTROL_PORT = 0x3F6
PRIMARY_IRQ = 14

# Command block registers, numbered as their offset from the command block's base.
REG_DATA, REG_ERROR, REG_SECTOR_COUNT, REG_LBA_LOW, REG_LBA_MID, REG_LBA_HIGH, REG_DEVICE, REG_STATUS = range(8)
REG_FEATURES, REG_COMMAND = REG_ERROR, REG_STATUS

# Status register bits.
ST_BSY, ST_DRDY, ST_DF, ST_DSC, ST_DRQ, ST_ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
ST_READY = ST_DRDY | ST_DSC  # an idle drive that is spun up and settled
# Error register bits.
ER_UNC, ER_IDNF, ER_ABRT = 0x40, 0x10, 0x04
# Device/head register bits; 7 and 5 are obsolete and read as one.
DEV_LBA, DEV_DEV, DEV_OBSOLETE = 0x40, 0x10, 0xA0
# Device control register bits.
CTL_NIEN, CTL_SRST = 0x02, 0x04

# Commands.
CMD_NOP = 0x00
CMD_RECALIBRATE = 0x10  # 0x10-0x1F
CMD_READ_SECTORS, CMD_READ_SECTORS_NORETRY = 0x20, 0x21
CMD_WRITE_SECTORS, CMD_WRITE_SECTORS_NORETRY = 0x30, 0x31
CMD_READ_VERIFY, CMD_READ_VERIFY_NORETRY = 0x40, 0x41
CMD_SEEK = 0x70
CMD_EXECUTE_DEVICE_DIAGNOSTIC = 0x90
CMD_INITIALIZE_DEVICE_PARAMETERS = 0x91
CMD_IDENTIFY_PACKET_DEVICE = 0xA1
CMD_READ_MULTIPLE, CMD_WRITE_MULTIPLE, CMD_SET_MULTIPLE_MODE = 0xC4, 0xC5, 0xC6
CMD_STANDBY_IMMEDIATE, CMD_IDLE_IMMEDIATE, CMD_STANDBY, CMD_IDLE = 0xE0, 0xE1, 0xE2, 0xE3
CMD_CHECK_POWER_MODE = 0xE5
CMD_FLUSH_CACHE = 0xE7
CMD_IDENTIFY_DEVICE = 0xEC
CMD_SET_FEATURES = 0xEF

# SET FEATURES subcommands (Features register).
SF_ENABLE_WRITE_CACHE, SF_DISABLE_WRITE_CACHE = 0x02, 0x82
SF_SET_TRANSFER_MODE = 0x03
SF_DISABLE_LOOK_AHEAD, SF_ENABLE_LOOK_AHEAD = 0x55, 0xAA
SF_DISABLE_REVERT, SF_ENABLE_REVERT = 0x66, 0xCC

MAX_MULTIPLE = 16  # sectors per READ/WRITE MULTIPLE block (IDENTIFY word 47)
LBA28_LIMIT = 1 << 28
POWER_ACTIVE, POWER_STANDBY = 0xFF, 0x00  # CHECK POWER MODE's sector count answers


def identify_string(text: str, length: int) -> bytes:
    """An IDENTIFY string field: ASCII padded with spaces, each word's two characters swapped
    (ATA puts the first character of a pair in the word's high byte)."""
    raw = text.encode("ascii", "replace")[:length].ljust(length, b" ")
    swapped = bytearray(length)
    swapped[0::2], swapped[1::2] = raw[1::2], raw[0::2]
    return bytes(swapped)


def default_geometry(sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) of the default CHS translation (IDENTIFY words
    1, 3, 6): 16 heads of 63 sectors, cylinders capped at 16383 as ATA says for large disks."""
    per_track = min(63, sectors)
    heads = max(1, min(16, sectors // per_track))
    cylinders = max(1, min(16383, sectors // (heads * per_track)))
    return cylinders, heads, per_track


@dataclass
class _Transfer:
    """A PIO data phase in progress: its direction and the sectors still to move."""

    data_in: bool  # device to host (a read, IDENTIFY) or host to device (a write)
    lba: int  # the first sector of the current block
    remaining: int  # sectors left, the current block included
    block: int  # sectors per DRQ block (1, or the multiple count)
    media: bool = True  # False for IDENTIFY: a buffer with no sectors behind it

    @property
    def block_sectors(self) -> int:
        return min(self.block, self.remaining)


class AtaDevice:
    """One device on the cable: its copy of the task-file registers, its status and its data
    buffer; the disk behind it or nothing (an absent device keeps only the latched registers)."""

    def __init__(self, channel: AtaChannel, unit: int, image: DiskImage | None, serial: str) -> None:
        self.channel = channel
        self.unit = unit
        self.image = image
        self.serial = serial
        self.model = "RING1 HARDDISK"
        self.firmware = "1.0"
        # What LBA28 can reach of the image, and the CHS translation it powers on with.
        self.sectors = min(image.sectors, LBA28_LIMIT - 1) if image is not None else 0
        self.default_chs = default_geometry(self.sectors) if image is not None else (0, 0, 0)
        self.chs: tuple[int, int, int] | None = None  # the current translation (None: none valid)
        self.hardware_reset()

    @property
    def present(self) -> bool:
        return self.image is not None

    # ------------------------------------------------------------ resets

    def hardware_reset(self) -> None:
        """Power-on: registers, settings and translation back to their defaults."""
        self.features = 0
        self.sector_count = self.lba_low = self.lba_mid = self.lba_high = 0
        self.device = DEV_OBSOLETE
        # The power-on multiple setting is vendor specific (Seagate: disabled, Fujitsu: 16);
        # 16 is QEMU's, which guests written against QEMU use without SET MULTIPLE MODE.
        self.multiple = MAX_MULTIPLE
        self.write_cache = True
        self.look_ahead = True
        self.revert_on_reset = False  # SET FEATURES 66h/CCh
        self.power = POWER_ACTIVE
        self.chs = self.default_chs if self.present else None
        self.status = 0
        self.error = 0
        self.pending = False
        self.transfer: _Transfer | None = None
        self.buffer = bytearray()
        self.position = 0
        self.end_reset()

    def begin_reset(self) -> None:
        """SRST asserted: whatever ran is dropped, the device is busy."""
        self.transfer = None
        self.buffer = bytearray()
        self.position = 0
        self.pending = False
        if self.present:
            self.status = ST_BSY

    def end_reset(self) -> None:
        """SRST released (or power-on done): the diagnostic passed, the signature is loaded."""
        self.device = DEV_OBSOLETE  # device 0 selected, head 0, CHS
        if not self.present:
            return
        if self.revert_on_reset:
            self.write_cache = self.look_ahead = True
        self.load_signature()
        self.error = 0x01  # diagnostic code: no error (device 1 passed or absent, for device 0)
        self.status = ST_READY

    def load_signature(self) -> None:
        """The ATA device signature (a packet device would put 14h/EBh in LBA mid/high)."""
        self.sector_count = 1
        self.lba_low = 1
        self.lba_mid = self.lba_high = 0
        self.device &= ~0x0F & 0xFF

    # ------------------------------------------------------------ addresses

    @property
    def lba_mode(self) -> bool:
        return bool(self.device & DEV_LBA)

    def address_limit(self) -> int:
        """Sectors the current addressing mode reaches."""
        if self.lba_mode:
            return self.sectors
        if self.chs is None:
            return 0
        cylinders, heads, per_track = self.chs
        return min(cylinders * heads * per_track, self.sectors)

    def start_address(self) -> int | None:
        """The sector the registers name, or None for a CHS address outside the translation."""
        if self.lba_mode:
            return (self.device & 0x0F) << 24 | self.lba_high << 16 | self.lba_mid << 8 | self.lba_low
        if self.chs is None:
            return None
        cylinders, heads, per_track = self.chs
        cylinder, head, sector = self.lba_high << 8 | self.lba_mid, self.device & 0x0F, self.lba_low
        if not (cylinder < cylinders and head < heads and 1 <= sector <= per_track):
            return None
        return (cylinder * heads + head) * per_track + sector - 1

    def set_address(self, lba: int) -> None:
        """Put a sector's address in the registers, in the mode the command used."""
        if self.lba_mode or self.chs is None:
            lba = min(lba, LBA28_LIMIT - 1)
            self.lba_low, self.lba_mid, self.lba_high = lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF
            self.device = self.device & 0xF0 | lba >> 24 & 0x0F
            return
        _, heads, per_track = self.chs
        track, sector = divmod(lba, per_track)
        cylinder, head = divmod(track, heads)
        cylinder = min(cylinder, 0xFFFF)
        self.lba_low, self.lba_mid, self.lba_high = sector + 1, cylinder & 0xFF, cylinder >> 8
        self.device = self.device & 0xF0 | head

    def command_count(self) -> int:
        return self.sector_count or 256

    # ------------------------------------------------------------ completion

    def complete(self, *, interrupt: bool = True) -> None:
        self.status = ST_READY
        self.error = 0
        if interrupt:
            self.channel.interrupt(self)

    def fail(self, error: int, *, at: int | None = None, fault: bool = False) -> None:
        """End the command with ERR and `error` in the error register (the failing sector in the
        address registers when there is one), and an interrupt."""
        self.transfer = None
        self.buffer = bytearray()
        self.position = 0
        if at is not None:
            self.set_address(at)
        self.error = error
        self.status = ST_READY | ST_ERR | (ST_DF if fault else 0)
        self.channel.interrupt(self)

    def abort(self) -> None:
        self.fail(ER_ABRT)

    # ------------------------------------------------------------ commands

    def execute(self, command: int) -> None:
        self.pending = False
        self.error = 0
        handler = _COMMANDS.get(command)
        if handler is None and CMD_RECALIBRATE <= command <= CMD_RECALIBRATE + 0x0F:
            handler = AtaDevice.cmd_recalibrate
        if handler is None:
            self.abort()
            return
        handler(self)

    def cmd_identify(self) -> None:
        self.transfer = _Transfer(data_in=True, lba=0, remaining=1, block=1, media=False)
        self.offer(self.identify_block())

    def cmd_identify_packet(self) -> None:
        # Not a packet device: the command aborts and the registers show what the device is.
        self.load_signature()
        self.abort()

    def cmd_read_sectors(self) -> None:
        self.start_read(block=1)

    def cmd_read_multiple(self) -> None:
        if not self.multiple:
            self.abort()
            return
        self.start_read(block=self.multiple)

    def cmd_write_sectors(self) -> None:
        self.start_write(block=1)

    def cmd_write_multiple(self) -> None:
        if not self.multiple:
            self.abort()
            return
        self.start_write(block=self.multiple)

    def cmd_set_multiple_mode(self) -> None:
        count = self.sector_count
        if count and (count > MAX_MULTIPLE or count & (count - 1)):
            self.multiple = 0  # an unsupported block size disables multiple mode
            self.abort()
            return
        self.multiple = count
        self.complete()

    def cmd_read_verify(self) -> None:
        start = self.start_address()
        if start is None:
            self.fail(ER_IDNF)
            return
        count = self.command_count()
        limit = self.address_limit()
        self.power = POWER_ACTIVE
        if start + count > limit:
            self.sector_count = max(0, start + count - max(start, limit)) & 0xFF
            self.fail(ER_IDNF, at=max(start, limit))
            return
        self.sector_count = 0
        self.set_address(start + count - 1)
        self.complete()

    def cmd_seek(self) -> None:
        start = self.start_address()
        if start is None or start >= self.address_limit():
            self.fail(ER_IDNF)
            return
        self.power = POWER_ACTIVE
        self.complete()

    def cmd_recalibrate(self) -> None:
        self.power = POWER_ACTIVE
        self.complete()

    def cmd_initialize_device_parameters(self) -> None:
        heads, per_track = (self.device & 0x0F) + 1, self.sector_count
        cylinders = min(self.sectors // (heads * per_track), 0xFFFF) if per_track else 0
        if not cylinders:
            # A translation the device cannot give: CHS media accesses fail with IDNF until
            # a valid one is set.
            self.chs = None
            self.abort()
            return
        self.chs = (cylinders, heads, per_track)
        self.complete()

    def cmd_set_features(self) -> None:
        feature = self.features
        if feature == SF_ENABLE_WRITE_CACHE:
            self.write_cache = True
        elif feature == SF_DISABLE_WRITE_CACHE:
            if not self.flush_image():
                return
            self.write_cache = False
        elif feature == SF_SET_TRANSFER_MODE:
            mode = self.sector_count
            # PIO default (00h, 01h) or PIO flow-control modes 0-4 (08h-0Ch); no DMA mode exists here.
            if not (mode in (0x00, 0x01) or 0x08 <= mode <= 0x0C):
                self.abort()
                return
        elif feature == SF_DISABLE_LOOK_AHEAD:
            self.look_ahead = False
        elif feature == SF_ENABLE_LOOK_AHEAD:
            self.look_ahead = True
        elif feature == SF_DISABLE_REVERT:
            self.revert_on_reset = False
        elif feature == SF_ENABLE_REVERT:
            self.revert_on_reset = True
        else:
            self.abort()
            return
        self.complete()

    def cmd_flush_cache(self) -> None:
        if self.flush_image():
            self.complete()

    def cmd_standby(self) -> None:
        self.power = POWER_STANDBY
        self.complete()

    def cmd_idle(self) -> None:
        self.power = POWER_ACTIVE
        self.complete()

    def cmd_check_power_mode(self) -> None:
        self.sector_count = self.power
        self.complete()

    # ------------------------------------------------------------ data phases

    def start_read(self, block: int) -> None:
        start = self.start_address()
        if start is None:
            self.fail(ER_IDNF)
            return
        self.power = POWER_ACTIVE
        self.transfer = _Transfer(data_in=True, lba=start, remaining=self.command_count(), block=block)
        self.next_read_block()

    def next_read_block(self) -> None:
        transfer = self.transfer
        assert transfer is not None
        count = transfer.block_sectors
        limit = self.address_limit()
        if transfer.lba + count > limit:
            self.sector_count = transfer.remaining & 0xFF
            self.fail(ER_IDNF, at=max(transfer.lba, limit))
            return
        assert self.image is not None
        try:
            data = self.image.read(transfer.lba, count)
        except OSError:
            self.sector_count = transfer.remaining & 0xFF
            self.fail(ER_UNC | ER_ABRT, at=transfer.lba)
            return
        self.offer(data)

    def offer(self, data: bytes) -> None:
        """A block is in the buffer for the host: DRQ and an interrupt."""
        self.buffer = bytearray(data)
        self.position = 0
        self.status = ST_READY | ST_DRQ
        self.channel.interrupt(self)

    def start_write(self, block: int) -> None:
        start = self.start_address()
        if start is None:
            self.fail(ER_IDNF)
            return
        self.power = POWER_ACTIVE
        self.transfer = _Transfer(data_in=False, lba=start, remaining=self.command_count(), block=block)
        # The first block is asked for at once, without an interrupt (PIO data-out protocol).
        self.buffer = bytearray(self.transfer.block_sectors * SECTOR_SIZE)
        self.position = 0
        self.status = ST_READY | ST_DRQ

    def read_word(self) -> int:
        transfer = self.transfer
        if transfer is None or not transfer.data_in or not self.status & ST_DRQ:
            return 0  # no data phase: nothing drives the data lines but the pull-downs
        word = self.buffer[self.position] | self.buffer[self.position + 1] << 8
        self.position += 2
        if self.position >= len(self.buffer):
            self.read_block_done(transfer)
        return word

    def read_block_done(self, transfer: _Transfer) -> None:
        count = transfer.block_sectors
        transfer.remaining -= count
        if transfer.media:
            transfer.lba += count
            self.sector_count = transfer.remaining & 0xFF
            self.set_address(transfer.lba - 1)  # the last sector transferred
        self.buffer = bytearray()
        self.position = 0
        if transfer.remaining:
            self.next_read_block()
        else:
            self.transfer = None
            self.status = ST_READY  # the last block of a read ends without an interrupt

    def write_word(self, word: int) -> None:
        transfer = self.transfer
        if transfer is None or transfer.data_in or not self.status & ST_DRQ:
            return
        self.buffer[self.position] = word & 0xFF
        self.buffer[self.position + 1] = word >> 8 & 0xFF
        self.position += 2
        if self.position >= len(self.buffer):
            self.write_block_done(transfer)

    def write_block_done(self, transfer: _Transfer) -> None:
        count = transfer.block_sectors
        limit = self.address_limit()
        if transfer.lba + count > limit:
            self.sector_count = transfer.remaining & 0xFF
            self.fail(ER_IDNF, at=max(transfer.lba, limit))
            return
        assert self.image is not None
        try:
            self.image.write(transfer.lba, bytes(self.buffer), durable=not self.write_cache)
        except OSError:
            self.sector_count = transfer.remaining & 0xFF
            self.fail(ER_ABRT, at=transfer.lba, fault=True)
            return
        transfer.remaining -= count
        transfer.lba += count
        self.sector_count = transfer.remaining & 0xFF
        self.set_address(transfer.lba - 1)
        if transfer.remaining:
            self.buffer = bytearray(transfer.block_sectors * SECTOR_SIZE)
            self.position = 0
            self.status = ST_READY | ST_DRQ
            self.channel.interrupt(self)
        else:
            self.transfer = None
            self.buffer = bytearray()
            self.position = 0
            self.complete()

    def flush_image(self) -> bool:
        """Make the written sectors durable; on a host failure end the command with DF."""
        assert self.image is not None
        try:
            self.image.flush()
        except OSError:
            self.fail(ER_ABRT, fault=True)
            return False
        return True

    # ------------------------------------------------------------ IDENTIFY

    def identify_block(self) -> bytes:
        """The 256 words of IDENTIFY DEVICE (ATA/ATAPI-6 layout)."""
        words = [0] * 256
        cylinders, heads, per_track = self.default_chs
        words[0] = 0x0040  # ATA device, fixed (not removable)
        words[1], words[3], words[6] = cylinders, heads, per_track
        words[47] = 0x8000 | MAX_MULTIPLE
        words[49] = 1 << 11 | 1 << 9  # IORDY supported, LBA supported; no DMA
        words[50] = 0x4000
        words[51] = 0x0200  # PIO timing mode 2 (obsolete field, still read by old drivers)
        words[53] = 0x0003  # words 54-58 and 64-70 are valid
        if self.chs is not None:
            current_cylinders, current_heads, current_per_track = self.chs
            capacity = current_cylinders * current_heads * current_per_track
            words[54], words[55], words[56] = current_cylinders, current_heads, current_per_track
            words[57], words[58] = capacity & 0xFFFF, capacity >> 16
        else:
            words[53] &= ~0x0001
        words[59] = 0x0100 | self.multiple if self.multiple else 0
        words[60], words[61] = self.sectors & 0xFFFF, self.sectors >> 16
        words[64] = 0x0003  # PIO modes 3 and 4
        words[67] = words[68] = 120  # minimum PIO cycle time (ns), without and with IORDY
        words[80] = 0x0078  # ATA-3 to ATA/ATAPI-6
        words[81] = 0x0019  # ATA/ATAPI-6 T13 1410D revision 3a
        # Command sets: NOP, read look-ahead, write cache, power management; FLUSH CACHE.
        words[82] = 1 << 14 | 1 << 6 | 1 << 5 | 1 << 3
        words[83] = 0x4000 | 1 << 12
        words[84] = 0x4000
        words[85] = 1 << 14 | (1 << 6 if self.look_ahead else 0) | (1 << 5 if self.write_cache else 0) | 1 << 3
        words[86] = 1 << 12
        words[87] = 0x4000
        block = bytearray(512)
        for i, word in enumerate(words):
            block[2 * i], block[2 * i + 1] = word & 0xFF, word >> 8
        block[20:40] = identify_string(self.serial, 20)
        block[46:54] = identify_string(self.firmware, 8)
        block[54:94] = identify_string(self.model, 40)
        # Word 255: the integrity signature A5h and a checksum making the 512 bytes sum to 0.
        block[510] = 0xA5
        block[511] = -sum(block[:511]) & 0xFF
        return bytes(block)


_COMMANDS: dict[int, Callable[[AtaDevice], None]] = {
    CMD_IDENTIFY_DEVICE: AtaDevice.cmd_identify,
    CMD_IDENTIFY_PACKET_DEVICE: AtaDevice.cmd_identify_packet,
    CMD_READ_SECTORS: AtaDevice.cmd_read_sectors,
    CMD_READ_SECTORS_NORETRY: AtaDevice.cmd_read_sectors,
    CMD_WRITE_SECTORS: AtaDevice.cmd_write_sectors,
    CMD_WRITE_SECTORS_NORETRY: AtaDevice.cmd_write_sectors,
    CMD_READ_MULTIPLE: AtaDevice.cmd_read_multiple,
    CMD_WRITE_MULTIPLE: AtaDevice.cmd_write_multiple,
    CMD_SET_MULTIPLE_MODE: AtaDevice.cmd_set_multiple_mode,
    CMD_READ_VERIFY: AtaDevice.cmd_read_verify,
    CMD_READ_VERIFY_NORETRY: AtaDevice.cmd_read_verify,
    CMD_SEEK: AtaDevice.cmd_seek,
    CMD_INITIALIZE_DEVICE_PARAMETERS: AtaDevice.cmd_initialize_device_parameters,
    CMD_SET_FEATURES: AtaDevice.cmd_set_features,
    CMD_FLUSH_CACHE: AtaDevice.cmd_flush_cache,
    CMD_STANDBY_IMMEDIATE: AtaDevice.cmd_standby,
    CMD_STANDBY: AtaDevice.cmd_standby,
    CMD_IDLE_IMMEDIATE: AtaDevice.cmd_idle,
    CMD_IDLE: AtaDevice.cmd_idle,
    CMD_CHECK_POWER_MODE: AtaDevice.cmd_check_power_mode,
}


class AtaChannel:
    """One IDE channel: the cable with its master (unit 0) and slave (unit 1), the device control
    register they share and the INTRQ wire to `irq`.

    It appears on the bus as three regions (`map_on` registers them): the data register alone,
    taken whole (`data_port`), the rest of the command block as 8-bit registers
    (`command_block`, offset 0 = the error/features register at base + 1), and the control
    block's alternate status / device control register (`control_block`)."""

    def __init__(
        self,
        irq: IrqLine,
        master: DiskImage | None = None,
        slave: DiskImage | None = None,
        *,
        name: str = "ide0",
    ) -> None:
        self.irq = irq
        self.name = name
        self.control = 0
        self.decoding = True  # the PIIX's IDE decode enable; off, the ports float as an empty bus
        self.selected = 0
        self.devices = (
            AtaDevice(self, 0, master, serial=f"RING1-{name.upper()}-0"),
            AtaDevice(self, 1, slave, serial=f"RING1-{name.upper()}-1"),
        )
        self.data_port = _DataPort(self)
        self.command_block = _CommandBlock(self)
        self.control_block = _ControlBlock(self)

    def map_on(
        self, bus: Bus, command_base: int = PRIMARY_COMMAND_BASE, control_port: int = PRIMARY_CONTROL_PORT
    ) -> None:
        """Register the channel's three regions at the legacy primary addresses (by default)."""
        bus.map_ports(f"{self.name}-data", command_base, 1, self.data_port, split=False)
        bus.map_ports(f"{self.name}-command", command_base + 1, 7, self.command_block)
        bus.map_ports(f"{self.name}-control", control_port, 1, self.control_block)

    @property
    def current(self) -> AtaDevice:
        return self.devices[self.selected]

    @property
    def any_present(self) -> bool:
        return self.devices[0].present or self.devices[1].present

    def reset(self) -> None:
        """The platform's hardware reset (RESET- on the cable)."""
        self.control = 0
        self.selected = 0
        for device in self.devices:
            device.hardware_reset()
        self.update_irq()

    def close(self) -> None:
        """Flush and close the images behind the drives."""
        for device in self.devices:
            if device.image is not None:
                device.image.close()

    # ------------------------------------------------------------ interrupts

    def interrupt(self, device: AtaDevice) -> None:
        device.pending = True
        self.update_irq()

    def update_irq(self) -> None:
        device = self.current
        self.irq.set(self.decoding and device.pending and not self.control & CTL_NIEN)

    # ------------------------------------------------------------ registers

    def busy(self) -> bool:
        return bool(self.current.status & (ST_BSY | ST_DRQ))

    def read_register(self, register: int) -> int:
        if not self.decoding:
            return 0xFF
        if not self.any_present:
            return 0x00
        device = self.current
        if register == REG_STATUS:
            status = device.status if device.present else 0x00
            if device.pending:
                device.pending = False
                self.update_irq()
            return status
        if register == REG_ERROR:
            return device.error if device.present else 0x00
        if register == REG_SECTOR_COUNT:
            return device.sector_count
        if register == REG_LBA_LOW:
            return device.lba_low
        if register == REG_LBA_MID:
            return device.lba_mid
        if register == REG_LBA_HIGH:
            return device.lba_high
        if register == REG_DEVICE:
            return device.device
        return 0x00

    def write_register(self, register: int, value: int) -> None:
        if not self.decoding:
            return
        if register == REG_COMMAND:
            self.write_command(value)
            return
        if self.busy():
            return
        for device in self.devices:  # both devices latch command-block writes
            if register == REG_FEATURES:
                device.features = value
            elif register == REG_SECTOR_COUNT:
                device.sector_count = value
            elif register == REG_LBA_LOW:
                device.lba_low = value
            elif register == REG_LBA_MID:
                device.lba_mid = value
            elif register == REG_LBA_HIGH:
                device.lba_high = value
            elif register == REG_DEVICE:
                device.device = value | DEV_OBSOLETE
        if register == REG_DEVICE:
            self.selected = 1 if value & DEV_DEV else 0
            self.update_irq()

    def write_command(self, command: int) -> None:
        if command == CMD_EXECUTE_DEVICE_DIAGNOSTIC and self.any_present and not self.busy():
            self.execute_device_diagnostic()  # addressed to both devices, whichever is selected
            return
        device = self.current
        if not device.present or self.busy():
            return
        device.execute(command)
        self.update_irq()

    def execute_device_diagnostic(self) -> None:
        """Both devices run their diagnostics; device 0 reports for the pair."""
        for device in self.devices:
            device.pending = False
            device.transfer = None
            device.device = DEV_OBSOLETE
            if device.present:
                device.load_signature()
                device.error = 0x01
                device.status = ST_READY
        self.selected = 0
        reporter = self.devices[0] if self.devices[0].present else self.devices[1]
        self.interrupt(reporter)

    def read_control(self) -> int:
        """Alternate status: the status register without clearing a pending interrupt."""
        if not self.decoding:
            return 0xFF
        device = self.current
        return device.status if device.present else 0x00

    def write_control(self, value: int) -> None:
        if not self.decoding:
            return
        was_resetting = self.control & CTL_SRST
        self.control = value & (CTL_NIEN | CTL_SRST)
        if value & CTL_SRST and not was_resetting:
            for device in self.devices:
                device.begin_reset()
        elif was_resetting and not value & CTL_SRST:
            for device in self.devices:
                device.end_reset()
            self.selected = 0
        self.update_irq()

    def read_data(self, size: int) -> int:
        if not self.decoding:
            return (1 << (8 * size)) - 1
        device = self.current
        if not device.present:
            return 0
        if size == 4:
            low = device.read_word()
            return low | device.read_word() << 16
        word = device.read_word()
        return word & 0xFF if size == 1 else word

    def write_data(self, size: int, value: int) -> None:
        if not self.decoding:
            return
        device = self.current
        if not device.present:
            return
        if size == 4:
            device.write_word(value & 0xFFFF)
            device.write_word(value >> 16 & 0xFFFF)
        else:
            device.write_word(value & (0xFF if size == 1 else 0xFFFF))
        self.update_irq()


class _DataPort:
    """The data register (command block offset 0), 16 or 32 bits a cycle: mapped with split=False."""

    def __init__(self, channel: AtaChannel) -> None:
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        return self.channel.read_data(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.write_data(size, value)


class _CommandBlock:
    """The 8-bit command block registers after the data register (offset 0 = base + 1)."""

    def __init__(self, channel: AtaChannel) -> None:
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        return self.channel.read_register(offset + 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.write_register(offset + 1, value & 0xFF)


class _ControlBlock:
    """Alternate status (read) / device control (write), at 0x3F6 on the primary channel."""

    def __init__(self, channel: AtaChannel) -> None:
        self.channel = channel

    def read(self, offset: int, size: int) -> int:
        return self.channel.read_control()

    def write(self, offset: int, size: int, value: int) -> None:
        self.channel.write_control(value & 0xFF)
