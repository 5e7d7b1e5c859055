#!/usr/bin/python3
"""An independent Modbus RTU slave for heldar's serial tests (Debian's python3-pymodbus 3.0).

Usage: modbus_slave.py PORT UNIT INPUTS RELAYS
Serves discrete inputs and coils (address N-1 is input/relay N) on PORT and reads commands
from stdin, one per line:
    di N 0|1    set discrete input N
    coils       print "coils b1 b2 ..." (the relay states as the master left them)
    pulses      print "pulses n1 n2 ...": how many times each relay went from off to on
Prints "ready" once serving.
"""
import asyncio
import logging
import sys

from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext)
from pymodbus.server import StartAsyncSerialServer
from pymodbus.transaction import ModbusRtuFramer

logging.basicConfig(level=logging.CRITICAL)


class CountingCoils(ModbusSequentialDataBlock):
    """Coils that count their rising edges: how many pulses a relay really gave."""

    def __init__(self, count):
        super().__init__(0, [0] * count)
        self.rises = [0] * count

    def setValues(self, address, values):
        for i, v in enumerate(values if isinstance(values, list) else [values]):
            n = address - self.address + i
            if 0 <= n < len(self.rises) and v and not self.values[n]:
                self.rises[n] += 1
        super().setValues(address, values)


async def main():
    port, unit, inputs, relays = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = ModbusSlaveContext(
        di=ModbusSequentialDataBlock(0, [0] * inputs),
        co=CountingCoils(relays),
        hr=ModbusSequentialDataBlock(0, [0]),
        ir=ModbusSequentialDataBlock(0, [0]),
        zero_mode=True,
    )
    context = ModbusServerContext(slaves={unit: store}, single=False)
    asyncio.create_task(StartAsyncSerialServer(
        context=context, framer=ModbusRtuFramer, port=port, baudrate=9600, timeout=0.01))
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = (await reader.readline()).decode().split()
        if not line:
            if reader.at_eof():
                return
            continue
        if line[0] == "di":
            store.setValues(2, int(line[1]) - 1, [int(line[2])])
            print("ok", flush=True)
        elif line[0] == "coils":
            values = store.getValues(1, 0, count=relays)
            print("coils " + " ".join("1" if v else "0" for v in values), flush=True)
        elif line[0] == "pulses":
            coils = store.store["c"]
            print("pulses " + " ".join(str(n) for n in coils.rises), flush=True)


asyncio.run(main())
