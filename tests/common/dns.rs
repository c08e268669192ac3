//! A small authoritative DNS server on loopback UDP for the tests: answers the records
//! it was given, NXDOMAIN for other names, and nothing at all for names under a
//! "silent" suffix (to provoke timeouts). It records every query it gets.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use hickory_proto::{
    op::{Message, OpCode, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, PTR, TXT},
    },
};

/// The running server; it stops when dropped.
pub struct DnsServer {
    pub address: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// One record: name, type ("A", "AAAA", "PTR" or "TXT"), value.
pub type Zone = Vec<(&'static str, &'static str, &'static str)>;

impl DnsServer {
    pub fn start(records: Zone, silent_suffix: &'static str) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let address = socket.local_addr().unwrap();
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (queries.clone(), stop.clone());
        thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                let Some(query) = request.queries.first().cloned() else {
                    continue;
                };
                let name = query.name().to_string().to_ascii_lowercase();
                log.lock()
                    .unwrap()
                    .push(format!("{} {name}", query.query_type()));
                if name.trim_end_matches('.').ends_with(silent_suffix) {
                    continue;
                }
                let mut response = Message::response(request.metadata.id, OpCode::Query);
                response.metadata.authoritative = true;
                response.metadata.recursion_desired = request.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.add_query(query.clone());
                let mut known = false;
                for (record_name, kind, value) in &records {
                    if record_name.trim_end_matches('.') != name.trim_end_matches('.') {
                        continue;
                    }
                    known = true;
                    let data = match (*kind, query.query_type()) {
                        ("A", RecordType::A) => RData::A(A(Ipv4Addr::from_str(value).unwrap())),
                        ("AAAA", RecordType::AAAA) => {
                            RData::AAAA(AAAA(Ipv6Addr::from_str(value).unwrap()))
                        }
                        ("PTR", RecordType::PTR) => RData::PTR(PTR(Name::from_str(value).unwrap())),
                        ("TXT", RecordType::TXT) => RData::TXT(TXT::new(vec![value.to_string()])),
                        _ => continue,
                    };
                    response.add_answer(Record::from_rdata(query.name().clone(), 60, data));
                }
                if !known {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from);
            }
        });
        DnsServer {
            address,
            queries,
            stop,
        }
    }

    /// The queries received so far, as "TYPE name".
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
