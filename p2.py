import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.set_strict_mode(0)
print("ro", h.is_read_only(), "trim", h.can_trim(), "zero", h.can_zero())
for name, f in [("w", lambda: h.pwrite(b"y"*512, 0)), ("z", lambda: h.zero(4096, 0)), ("t", lambda: h.trim(4096,0))]:
    try: f(); print(name, "ok")
    except nbd.Error as e: print(name, e.errno, e.string)
