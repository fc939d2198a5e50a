//! Licences from realistic Debian copyright files.

use kiln_attest::license_from_copyright;

const FORMAT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/";

#[test]
fn gpl2_plus_with_other_paragraphs() {
    // Shaped like a typical C library's copyright file: the Files: * paragraph
    // is not the first Files paragraph, and stand-alone License paragraphs
    // follow.
    let text = format!(
        "{FORMAT}
Upstream-Name: libexample
Upstream-Contact: Jane Doe <jane@example.org>
Source: https://example.org/libexample/

Files: debian/*
Copyright: 2019-2024 Debian Maintainer <maint@debian.org>
License: GPL-3+

Files: *
Copyright: 1998-2024 Jane Doe <jane@example.org>
           2003 John Roe
License: GPL-2+
Comment: Some files are also available under the LGPL.

Files: compat/getopt.c
Copyright: 1987-2001 Free Software Foundation, Inc.
License: LGPL-2.1+

License: GPL-2+
 This program is free software; you can redistribute it and/or modify
 it under the terms of the GNU General Public License as published by
 the Free Software Foundation; either version 2 of the License, or
 (at your option) any later version.
 .
 On Debian systems, the complete text of the GNU General Public
 License version 2 can be found in `/usr/share/common-licenses/GPL-2'.

License: LGPL-2.1+
 On Debian systems, see `/usr/share/common-licenses/LGPL-2.1'.
"
    );
    assert_eq!(
        license_from_copyright(&text).as_deref(),
        Some("GPL-2.0-or-later")
    );
}

#[test]
fn expat_with_crlf_and_comments() {
    let text = format!(
        "{FORMAT}\r\nUpstream-Name: tinylib\r\n\r\n# generated\r\nFiles: *\r\nCopyright: 2015 A. Person\r\nLicense: Expat\r\n Permission is hereby granted, free of charge, to any person obtaining\r\n a copy of this software...\r\n"
    );
    assert_eq!(license_from_copyright(&text).as_deref(), Some("MIT"));
}

#[test]
fn old_dep5_format_url_and_compound_licence() {
    let text = "Format: http://dep.debian.net/deps/dep5\n\
                Upstream-Name: Foo-Bar\n\n\
                Files: * lib/*\n\
                Copyright: 2001 Someone\n\
                License: Artistic or GPL-1+\n\
                 Perl's usual terms.\n";
    assert_eq!(
        license_from_copyright(text).as_deref(),
        Some("Artistic-1.0-Perl OR GPL-1.0-or-later")
    );
}

#[test]
fn unknown_licence_becomes_a_licenseref() {
    let text = format!(
        "{FORMAT}\nUpstream-Name: oddball\n\nFiles: *\nCopyright: 2010 Odd Ball\n\
         License: Oddball-Permissive-1.0+\n Do what you like.\n"
    );
    assert_eq!(
        license_from_copyright(&text).as_deref(),
        Some("LicenseRef-Oddball-Permissive-1.0-plus")
    );
    let text = format!("{FORMAT}\n\nFiles: *\nCopyright: none\nLicense: public-domain\n");
    assert_eq!(
        license_from_copyright(&text).as_deref(),
        Some("LicenseRef-public-domain")
    );
}

#[test]
fn header_licence_when_there_is_no_files_star() {
    let text = format!(
        "{FORMAT}\nUpstream-Name: x\nLicense: BSD-3-clause\n\nFiles: src/*\nCopyright: 2000 X\nLicense: Zlib\n"
    );
    assert_eq!(
        license_from_copyright(&text).as_deref(),
        Some("BSD-3-Clause")
    );
}

#[test]
fn not_machine_readable() {
    // A free-form copyright file, as many packages still ship.
    let text = "This is the Debian prepackaged version of the GNU foo utility.\n\
                It was downloaded from ftp://ftp.gnu.org/gnu/foo/\n\n\
                Copyright (C) 1990-2020 Free Software Foundation, Inc.\n\n\
                License: GPL-3+\n\n\
                On Debian systems, the complete text of the GNU General Public\n\
                License can be found in `/usr/share/common-licenses/GPL-3'.\n";
    assert_eq!(license_from_copyright(text), None);
    // A Format field naming something else.
    assert_eq!(
        license_from_copyright("Format: something else\n\nFiles: *\nLicense: MIT\n"),
        None
    );
    assert_eq!(license_from_copyright(""), None);
    // Machine-readable, but no licence for the whole package.
    let text = format!("{FORMAT}\n\nFiles: src/*\nCopyright: 2000 X\nLicense: Zlib\n");
    assert_eq!(license_from_copyright(&text), None);
}
