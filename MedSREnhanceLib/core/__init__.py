"""The data layer: the Volume type and its grid rule, file I/O, resampling, intensity normalisation, errors and
progress reports. Imports nothing from the rest of the library."""
